"""The select stage: the backbone to fine-tune (LogME, tasks/selection/), or the champion for a
warm start."""

from __future__ import annotations

from pathlib import Path

import mlflow

from flows.stages.caching import cached_stage, stage_key
from flows.stages.flowrun import (
    FlowRun,
    tag_parent,
)
from tasks.core.config import Candidate, SelectParams
from tasks.data import datasets
from tasks.modality import Modality
from tasks.models import finetune
from tasks.selection import candidates


@cached_stage("select")
def select_backbone(
    params: SelectParams,
    offered: tuple[Candidate, ...],
    top_k: int,
    data: datasets.SplitData,
    seed: int,
    warm_start_from: str | None,
    warm_start_version: str | None,
    registry_state: dict[str, str],
    modality: Modality,
    root: Path,
    compete: bool = False,
) -> candidates.Selection:
    """The champion to warm-start from, or the candidate backbone LogME ranks first (and the
    next `top_k - 1`: only the strategy search uses them), each scored at its own input size.
    With `compete` (the search) a warm start keeps LogME's best `top_k` as its runners-up.
    Frozen features and converted weights are kept under `root/.transferops/`.
    `registry_state` (what the candidates resolve to now) only keys the cache."""
    start = candidates.select(
        offered,
        data.train,
        data.class_names,
        params.max_samples,
        seed,
        modality,
        warm_start_from,
        warm_start_version,
        top_k,
        root,
        compete,
    )
    start.fingerprint = stage_key()
    return start


def log_selection(start: candidates.Selection, run: FlowRun, reused: bool) -> str:
    if start.scores:
        mlflow.log_metrics({f"logme.{k}": v for k, v in start.scores.items()})
    kept = [r.uri for r in start.runners_up]
    mlflow.log_dict(
        {"chosen": start.uri, "runners_up": kept, "scores": start.scores, "samples": start.samples},
        "selection.json",
    )
    tag_parent(run, {"backbone": start.uri, **start.lineage})
    if not start.scores:
        return f"warm start from {start.uri}"
    scores = ", ".join(f"{k} {v:.4f}" for k, v in start.scores.items())
    if start.init_head is not None:
        rivals = ", ".join(kept)
        return f"warm start from {start.uri}, against {rivals} in the strategy search (LogME: {scores})"
    also = f"; kept {', '.join(kept)} for the strategy search" if kept else ""
    logme = f"LogME on {start.samples} {start.encoding.modality}: {scores}"
    return f"chose {start.uri} at {start.encoding.describe()} ({logme}){also}"


def searched_backbone(
    run: FlowRun, start: candidates.Selection, result: finetune.FinetuneResult
) -> candidates.Selection:
    """The selection with the backbone the strategy search fine-tuned (a runner-up it may have
    preferred to LogME's first), retagged on the flow's run."""
    if not result.search or result.search["backbone"] == start.uri:
        return start
    start = start.pick(result.search["backbone"])
    client = mlflow.MlflowClient()
    for key, value in {"backbone": start.uri, **start.lineage}.items():
        client.set_tag(run.run_id, key, value)
    return start
