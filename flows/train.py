"""The train flow: validate -> split -> select -> finetune -> evaluate -> register (+ promote)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import mlflow
from prefect import flow
from prefect.states import State

from flows import stages
from tasks import registry, runlock
from tasks.config import Params
from tasks.summary import RunSummary


@flow(name="train", validate_parameters=False)
def train_flow(
    data_dir: Path,
    params: Params,
    root: Path,
    warm_start: bool = False,
    only_if_new_data: bool = False,
    flow_name: str = "train",
    warm_start_version: str | None = None,
    register: bool = True,
    extra_tags: dict[str, str] | None = None,
) -> RunSummary | State:
    """Fine-tune a pretrained backbone on `data_dir` and register the result. `warm_start`
    starts from the champion (or from `warm_start_version`) when it knows the same classes;
    `only_if_new_data` skips the run when the champion was trained on this very data version;
    `register=False` stops after evaluation (a reproduction registers nothing)."""
    model_name = params.register.model_name
    with (
        runlock.exclusive(root, model_name) if register else nullcontext(),
        stages.tracked_flow(flow_name, params, root, extra_tags) as run,
    ):
        data_dir = run.paths.resolve(data_dir)
        data = stages.validate_data(data_dir, params.validate, run)
        if not data.report.success:
            return stages.failed(data.report.message(data_dir))
        version = data.lineage["data_version"]
        unchanged = registry.champion_with_data(model_name, version) if only_if_new_data else None
        if unchanged is not None:
            mlflow.set_tag("outcome", "skipped: data unchanged")
            return RunSummary(
                flow_name,
                run.run_id,
                skipped=f"data {version} unchanged since champion v{unchanged}; nothing to retrain",
            )
        split = stages.split_data(data, data_dir, params.split, params.data.image_size, run)
        start = stages.select_backbone(
            params.select,
            split,
            params.data.image_size,
            params.finetune.seed,
            model_name if warm_start else None,
            warm_start_version,
            run,
        )
        result = stages.finetune_model(start, split, params.finetune, version, run)
        evaluation = stages.evaluate_model(result, split, model_name, run)
        registered = None
        if register:
            registered = stages.register_model(
                result,
                split,
                params.data.image_size,
                evaluation,
                stages.version_tags(run, data, params, start),
                params.register,
                run,
            )
    return RunSummary(
        flow=flow_name,
        mlflow_run_id=run.run_id,
        data_version=version,
        data_dvc_state=data.lineage["data_dvc_state"],
        images=split.sizes(),
        classes=split.class_names,
        stage_seconds=run.seconds,
        logme=start.scores,
        backbone=start.uri,
        test=evaluation.challenger.metrics,
        champion_before=evaluation.champion,
        registered=registered,
    )
