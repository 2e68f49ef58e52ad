"""The train flow: validate -> split -> select -> finetune -> evaluate -> register (+ promote)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import mlflow
from prefect import flow
from prefect.states import State

from flows import stages
from tasks import registry, runlock, selection
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
    force: bool = False,
) -> RunSummary | State:
    """Fine-tune a pretrained backbone on `data_dir` and register the result. `warm_start`
    starts from the champion (or from `warm_start_version`) when it knows the same classes;
    `only_if_new_data` skips the run when the champion was trained on this very data version;
    `register=False` stops after evaluation (a reproduction registers nothing). A stage whose
    inputs are unchanged since an earlier run is reused (`flows.caching`); `force` recomputes."""
    model_name = params.register.model_name
    with (
        runlock.exclusive(root, model_name) if register else nullcontext(),
        stages.tracked_flow(flow_name, params, root, extra_tags, force) as run,
    ):
        data_dir = run.paths.resolve(data_dir)
        data = stages.run_stage(
            run,
            stages.validate_data,
            stages.log_validation,
            data_dir=data_dir,
            params=params.validate,
            docs_root=run.paths.root / ".transferops" / "data_docs",
        )
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
        split = stages.run_stage(
            run,
            stages.split_data,
            stages.log_split,
            data=data,
            data_dir=data_dir,
            params=params.split,
            image_size=params.data.image_size,
        )
        warm_start_from = model_name if warm_start else None
        start = stages.run_stage(
            run,
            stages.select_backbone,
            stages.log_selection,
            params=params.select,
            data=split,
            image_size=params.data.image_size,
            seed=params.finetune.seed,
            warm_start_from=warm_start_from,
            warm_start_version=warm_start_version,
            registry_state=selection.registry_state(
                params.select.candidates, warm_start_from, warm_start_version
            ),
        )
        result = stages.run_stage(
            run,
            stages.finetune_model,
            stages.log_training,
            start=start,
            data=split,
            params=params.finetune,
            reproducibility=params.reproducibility,
            root=run.paths.root,
        )
        evaluation = stages.run_stage(
            run,
            stages.evaluate_model,
            stages.log_evaluation,
            result=result,
            data=split,
            model_name=model_name,
            champion=registry.champion_version(model_name),
        )
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
        reused=run.reused,
        logme=start.scores,
        backbone=start.uri,
        test=evaluation.challenger.metrics,
        champion_before=evaluation.champion,
        registered=registered,
    )
