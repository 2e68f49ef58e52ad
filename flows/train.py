"""The train flow: validate -> split -> select -> finetune -> evaluate -> register (+ promote)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow
from prefect.states import Completed, State

from flows import stages
from tasks import registry
from tasks.config import Params


@flow(name="train", validate_parameters=False)
def train_flow(
    data_dir: Path,
    params: Params,
    root: Path,
    warm_start: bool = False,
    only_if_new_data: bool = False,
) -> dict[str, Any] | State:
    """Fine-tune a pretrained backbone on `data_dir` and register the result."""
    with stages.tracked_flow("train", params, root) as run:
        run_id = run.run_id
        data_dir = run.paths.resolve(data_dir)
        data = stages.validate_data(data_dir, params.validate, run_id)
        if not data.report.success:
            return stages.failed(data.report.message(data_dir))
        champion = registry.version_by_alias(params.register.model_name, registry.CHAMPION)
        if (
            only_if_new_data
            and champion
            and champion.tags.get("data_version") == data.lineage["data_version"]
        ):
            mlflow.set_tag("outcome", "skipped: data unchanged")
            return Completed(
                message=f"data {data.lineage['data_version']} unchanged since "
                f"champion v{champion.version}; nothing to retrain"
            )

        split = stages.split_data(data.manifest, data_dir, params.split, params.data.image_size, run_id)
        start = stages.champion_start(params.register.model_name, split.class_names) if warm_start else None
        if start is None:
            start = stages.select_backbone(
                params.select.candidates,
                split.train,
                params.data.image_size,
                params.select.max_samples,
                params.finetune.seed,
                run_id,
            )
        mlflow.set_tag("backbone", start.uri)
        result = stages.finetune_model(start, split, params.finetune, run_id)
        evaluation = stages.evaluate_model(result.model, split, params.register.model_name, run_id)
        mlflow.log_metrics({f"test_{k}": v for k, v in evaluation.metrics.items()})
        version_tags = {
            **run.tags,
            **data.lineage,
            "backbone": start.uri,
            "mlflow_run_id": run_id,
            "params": json.dumps(params.as_dict(), sort_keys=True),
        }
        registered = stages.register_model(
            result.model,
            split,
            params.data.image_size,
            evaluation,
            version_tags,
            params.register,
            run_id,
        )
    return {
        "flow": "train",
        "mlflow_run_id": run_id,
        "data_version": data.lineage["data_version"],
        "data_dvc_state": data.lineage["data_dvc_state"],
        "images": {s: len(getattr(split, s)) for s in ("train", "val", "test")},
        "classes": split.class_names,
        "logme": start.scores,
        "backbone": start.uri,
        "test": evaluation.metrics,
        "champion_before": {"version": evaluation.champion_version, "test": evaluation.champion_metrics},
        "registered": registered,
        "stage_seconds": stages.stage_timings(run_id),
    }
