"""One retention pass over a project: plan (tasks.retention.keep and .files), then, unless dry,
delete in an order that never leaves a kept thing pointing at a deleted one: registry versions
and runs first (MLflow's soft delete), then `mlflow gc` of exactly those (local store), then
the files, DVC's cache, and Prefect's flow-run history."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow

from tasks.core.config import Params
from tasks.retention import files, keep

FLOWS = ["train", "retrain", "pretrain", "reproduce"]  # this project's Prefect flows


@dataclass
class Freed:
    """What a pass deleted (or, dry, would delete): per kind, a count and bytes."""

    dry_run: bool
    counts: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    listed: list[str] = field(default_factory=list)  # one line per item (for --dry-run)
    notes: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # "model vN" -> why it is kept

    def add(self, kind: str, count: int, size: int = 0) -> None:
        if count:
            self.counts[kind] = self.counts.get(kind, 0) + count
            self.bytes[kind] = self.bytes.get(kind, 0) + size

    def lines(self) -> list[str]:
        verb = "would free" if self.dry_run else "freed"
        out = [f"kept {v} ({why})" for v, why in self.kept.items()]
        if self.dry_run:
            out += self.listed
        for kind, count in self.counts.items():
            size = f", {self.bytes[kind] / 1e6:.1f} MB" if self.bytes.get(kind) else ""
            out.append(f"{kind}: {count}{size}")
        total = sum(self.bytes.values())
        out += [f"note: {n}" for n in self.notes]
        out.append(f"gc {verb} {total / 1e6:.1f} MB" if self.counts else f"gc: nothing to {verb.split()[-1]}")
        return out


def _local_store(uri: str) -> bool:
    return uri.startswith("sqlite:///")


def _mlflow_gc(uri: str, kept: keep.Kept, artifacts: Path) -> str | None:
    """`mlflow gc` of the runs and logged models just deleted, in the local store; None when
    done, else why not."""
    if not _local_store(uri):
        return (
            f"runs and models deleted in {uri}; their artifacts go when `mlflow gc` runs where that "
            "server's store is"
        )
    models = [m for _, _, m in kept.dropped if m]
    if not kept.dropped_runs and not models:
        return None
    args = [sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", uri]
    if kept.dropped_runs:
        args += ["--run-ids", ",".join(kept.dropped_runs)]
    if models:
        args += ["--logged-model-ids", ",".join(models)]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()
        return f"mlflow gc failed: {last[-1] if last else 'no output'}"
    for run_id in kept.dropped_runs:  # mlflow gc empties a run's artifact folder, leaves the folder
        with contextlib.suppress(OSError):
            (artifacts / run_id / "artifacts").rmdir()
            (artifacts / run_id).rmdir()
    return None


def _prefect_history(days: int, dry_run: bool) -> int:
    """Delete (count) finished flow runs of this project's flows older than `days`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    before = datetime.now(UTC) - timedelta(days=days)
    final = [StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED]
    count = 0
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=FLOWS)),
                flow_run_filter=FlowRunFilter(
                    start_time=FlowRunFilterStartTime(before_=before),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=final)),
                ),
                limit=200,
                offset=count if dry_run else 0,
            )
            if not runs:
                return count
            count += len(runs)
            if not dry_run:
                for run in runs:
                    client.delete_flow_run(run.id)


def sweep(root: Path, params: Params, experiment_id: str, dry_run: bool, prefect: bool = True) -> Freed:
    """Plan and (unless `dry_run`) apply retention to the project at `root`, whose MLflow
    experiment is `experiment_id` (tracking already configured)."""
    retention = params.retention
    freed = Freed(dry_run)
    models = [params.register.model_name, params.pretrain.model_name]
    kept = keep.plan(models, experiment_id, retention)
    freed.kept = {f"{n} v{v}": why for (n, v), why in sorted(kept.versions.items())}
    freed.add("registered versions", len(kept.dropped))
    freed.add("MLflow runs", len(kept.dropped_runs))
    freed.listed += [f"version {n} v{v}" for n, v, _ in kept.dropped]
    uri = mlflow.get_tracking_uri()
    mlflow_dir = root / "mlflow"
    before = files.size_of(mlflow_dir) if _local_store(uri) and mlflow_dir.is_dir() else 0
    if not dry_run:
        keep.drop(kept)
        note = _mlflow_gc(uri, kept, mlflow_dir / "artifacts")
        if note:
            freed.notes.append(note)
        if before:
            freed.bytes["MLflow runs"] = max(0, before - files.size_of(mlflow_dir))
    since = kept.oldest_kept_start_ms / 1000 if kept.oldest_kept_start_ms else None
    data = [root / params.data.raw, root / params.data.source]
    versions = {m: {v for n, v in kept.versions if n == m} for m in models}
    doomed = files.doomed(
        root, retention, kept.result_keys, since, data, kept.data_paths, versions, kept.data_versions
    )
    for item in doomed:
        freed.add(item.kind, 1, item.size)
        where = item.path.relative_to(root) if item.path.is_relative_to(root) else item.path
        freed.listed.append(f"{item.kind} {where}")
    if not dry_run:
        files.delete(doomed)
    cache = root / ".dvc" / "cache"
    before = files.size_of(cache) if cache.is_dir() else 0
    removed, problem = files.dvc_gc(root, kept.data_versions, dry_run)
    if problem:
        freed.notes.append(problem)
    freed.add("DVC cache objects", removed, 0 if dry_run else max(0, before - files.size_of(cache)))
    if prefect and retention.prefect_days:
        freed.add("Prefect flow runs", _prefect_history(retention.prefect_days, dry_run))
    return freed
