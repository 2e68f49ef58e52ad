"""The register stage: not cached, no retries; the registry itself finds a version made from
the same training (its `training_key` tag) instead of adding it again."""

from __future__ import annotations

import mlflow
from prefect import get_run_logger

from flows.stages.finetune import strategy_tag
from flows.stages.flowrun import (
    FlowRun,
    stage,
    stage_run,
)
from tasks.core.config import ExportParams, RegisterParams
from tasks.data import datasets
from tasks.modality import Encoding
from tasks.models import finetune
from tasks.promotion import promote
from tasks.registry import versions
from tasks.reporting.tracking import scratch_dir


@stage(name="register")  # not cached, no retries: registration is found again by TRAINING_KEY
def register_model(
    result: finetune.FinetuneResult,
    data: datasets.SplitData,
    encoding: Encoding,
    evaluation: promote.Evaluation,
    tags: dict[str, str],
    params: RegisterParams,
    export_params: ExportParams,
    run: FlowRun,
) -> versions.Registered:
    """Log the pyfunc, create the version with lineage tags, set the aliases through the gate;
    or find the version this very training was registered as before."""
    with stage_run("register", run), scratch_dir() as tmp:
        registered = promote.register_candidate(
            result.model,
            data,
            encoding,
            evaluation,
            {**tags, versions.TRAINING_KEY: result.fingerprint, **strategy_tag(result)},
            params,
            tmp,
            export_params,
        )
        mlflow.set_tags({"registered_version": registered.version, "promotion": registered.reason})
    get_run_logger().info(
        "register: %s v%s (aliases %s, served through %s): %s",
        registered.model,
        registered.version,
        ", ".join(registered.aliases) or "none",
        registered.runtime,
        registered.reason,
    )
    return registered
