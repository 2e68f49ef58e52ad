"""What retention keeps in the registry and the tracking store, and what it may drop.

A version is kept when it holds an alias (`champion`, `challenger`, the backbone's), took part
in one of the last `keep_moves` moves of the champion, or is one of the last `keep_last`
versions; and, to rebuild a kept version, the version it started from (a warm start's
champion, the pretrained backbone) is kept too: one level, since loading that parent needs its
weights, not its own parent. A run is kept when it made a kept version, is one of the last
`keep_last` flow runs, or is still running; a stage run goes with its flow's run.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from tasks.core.config import RetentionParams, registry_ref
from tasks.registry import history, lease

PARENT_TAG = "mlflow.parentRunId"
RESULT_KEY = "result_key"  # a stage run's tag: the key its cached result is stored under


@dataclass
class Kept:
    """The registry and runs as retention sees them."""

    versions: dict[tuple[str, str], str] = field(default_factory=dict)  # (model, version) -> why kept
    dropped: list[tuple[str, str, str | None]] = field(default_factory=list)  # (model, version, model id)
    runs: set[str] = field(default_factory=set)  # run ids kept (flow runs and their stage runs)
    dropped_runs: list[str] = field(default_factory=list)
    result_keys: set[str] = field(default_factory=set)  # cached results the kept runs used
    data_versions: set[str] = field(default_factory=set)  # DVC hashes the kept versions need
    data_paths: set[str] = field(default_factory=set)  # folders the kept versions were trained on
    oldest_kept_start_ms: int | None = None  # start of the oldest of the last `keep_last` flow runs


def _versions(client: MlflowClient, name: str) -> list:
    if name.endswith(lease.SUFFIX):
        return []
    return list(client.search_model_versions(f"name = '{name}'", max_results=100_000))


def kept_versions(name: str, retention: RetentionParams) -> dict[str, str]:
    """Version -> why it is kept, for registered model `name` (before parents are added)."""
    client = MlflowClient()
    numbers = sorted((int(v.version) for v in _versions(client, name)), reverse=True)
    kept: dict[str, str] = {}
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException:
        return kept
    for alias, version in sorted(aliases.items()):
        kept.setdefault(str(version), f"holds @{alias}")
    recent = history.moves(name)[-retention.keep_moves :] if retention.keep_moves else []
    for move in recent:
        for version in (move.to_version, move.from_version):
            if version:
                kept.setdefault(str(version), f"in champion move #{move.number}")
    for number in numbers[: retention.keep_last]:
        kept.setdefault(str(number), f"one of the last {retention.keep_last} versions")
    return kept


def model_id_of(version: ModelVersion) -> str | None:
    """The logged model a version was made from (search results leave `model_id` unset; the
    source `models:/m-...` names it)."""
    source = version.source or ""
    return version.model_id or (source.removeprefix("models:/") if source.startswith("models:/m-") else None)


def parents_of(name: str, tags: dict[str, str]) -> list[tuple[str, str]]:
    """The registered versions version `tags` of model `name` was made from: the one it started
    from (warm start or pretrained backbone), the champion that competed in its search, and the
    teacher it was distilled from (NAME/N)."""
    backbone, pinned = tags.get("backbone", ""), tags.get("backbone_version", "")
    found = []
    if backbone.startswith("registry:") and pinned:
        found.append((registry_ref(backbone.removeprefix("registry:"))[0], pinned))
    if tags.get("warm_start_version"):
        found.append((name, tags["warm_start_version"]))
    if tags.get("distilled_from"):
        teacher, _, version = tags["distilled_from"].partition("/")
        found.append((teacher, version))
    return found


def _all_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def plan(models: list[str], experiment_id: str, retention: RetentionParams) -> Kept:
    """Kept and dropped versions and runs of `models` in experiment `experiment_id`."""
    client = MlflowClient()
    kept = Kept()
    tags_of: dict[tuple[str, str], dict[str, str]] = {}
    model_ids: dict[tuple[str, str], str | None] = {}
    for name in models:
        for version in _versions(client, name):
            key = (name, str(version.version))
            tags_of[key] = dict(version.tags)
            model_ids[key] = model_id_of(version)
        for version, why in kept_versions(name, retention).items():
            kept.versions[(name, version)] = why
    for (name, version), _ in list(kept.versions.items()):
        for parent in parents_of(name, tags_of.get((name, version), {})):
            if parent in tags_of:
                kept.versions.setdefault(parent, f"v{version} of {name} started from it")
    kept.dropped = [(n, v, model_ids[(n, v)]) for (n, v) in sorted(tags_of) if (n, v) not in kept.versions]

    runs = _all_runs(client, experiment_id)
    flows = sorted((r for r in runs if PARENT_TAG not in r.data.tags), key=lambda r: r.info.start_time or 0)
    recent = flows[-retention.keep_last :] if retention.keep_last else []
    if recent:
        kept.oldest_kept_start_ms = recent[0].info.start_time
    made = {tags_of[k].get("mlflow_run_id") for k in kept.versions if k in tags_of}
    kept_flows = {r.info.run_id for r in recent} | (made - {None})
    kept_flows |= {r.info.run_id for r in flows if r.info.status == "RUNNING"}
    for run in runs:
        flow = run.data.tags.get(PARENT_TAG, run.info.run_id)
        if flow in kept_flows or run.info.status == "RUNNING":
            kept.runs.add(run.info.run_id)
            if RESULT_KEY in run.data.tags:
                kept.result_keys.add(run.data.tags[RESULT_KEY])
        else:
            kept.dropped_runs.append(run.info.run_id)
    for key in kept.versions:
        tags = tags_of.get(key, {})
        if tags.get("data_version"):
            kept.data_versions.add(tags["data_version"])
        if tags.get("data_path"):
            kept.data_paths.add(tags["data_path"])
    return kept


def drop(kept: Kept) -> None:
    """Delete the dropped versions (and their logged models) and runs (MLflow's soft delete:
    `mlflow gc` removes them and their artifacts for good)."""
    client = MlflowClient()
    for name, version, model_id in kept.dropped:
        client.delete_model_version(name, version)
        if model_id:
            with contextlib.suppress(MlflowException):  # a client that predates logged models
                client.delete_logged_model(model_id)
    for run_id in kept.dropped_runs:
        client.delete_run(run_id)
