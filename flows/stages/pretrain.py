"""The pretrain stages: the source backbone trained from scratch (tasks/models/pretraining.py)
and registered as a pretrained model."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from prefect import get_run_logger

from flows.stages.caching import cached_stage, stage_key
from flows.stages.evaluate import log_test_report, scores
from flows.stages.finetune import training_line
from flows.stages.flowrun import (
    FlowRun,
    log_events,
    say_resumed,
    stage,
    stage_run,
)
from tasks.core.config import (
    PretrainParams,
    ReproducibilityParams,
)
from tasks.data import datasets
from tasks.modality import Encoding
from tasks.models import checkpoints, pretraining
from tasks.registry import versions
from tasks.reporting.tracking import log_history


@cached_stage("pretrain")
def pretrain_backbone(
    data: datasets.SplitData,
    params: PretrainParams,
    encoding: Encoding,
    reproducibility: ReproducibilityParams,
    root: Path,
) -> pretraining.PretrainResult:
    """Train the small CNN from scratch on the source data and score it on its test split."""
    key = stage_key()
    result = pretraining.pretrain(
        data,
        params,
        encoding,
        checkpoints.folder(root, "pretrain", key),
        checkpoints.events_folder(root, "pretrain", key),
    )
    say_resumed(result.resumed)
    result.fingerprint = key
    return result


def log_pretraining(result: pretraining.PretrainResult, run: FlowRun, reused: bool) -> str:
    if result.resumed and not reused:
        mlflow.set_tag("resumed_from_epoch", json.dumps(result.resumed))
    log_history({"pretrain": result.history})
    log_events(result.events)
    log_test_report(result.test, "source_test_", "pretraining (source test split)")
    return f"{training_line({'pretrain': result.history})}; source test {scores(result.test.metrics)}"


@stage(name="register")
def register_backbone(
    result: pretraining.PretrainResult,
    data: datasets.SplitData,
    params: PretrainParams,
    tags: dict[str, str],
    run: FlowRun,
) -> versions.Registered:
    """Register the frozen backbone under its alias (what `registry:` candidates load)."""
    with stage_run("register", run):
        registered = versions.register_backbone(
            result.backbone,
            params.model_name,
            params.alias,
            data.class_names,
            {**tags, versions.TRAINING_KEY: result.fingerprint},
        )
        mlflow.set_tags({"registered_version": registered.version})
    get_run_logger().info("register: %s v%s: %s", registered.model, registered.version, registered.reason)
    return registered
