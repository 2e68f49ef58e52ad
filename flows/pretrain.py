"""The pretrain flow: a backbone trained on the source data, registered as a pretrained model.

The offline stand-in for ImageNet weights: `select` finds it as `registry:<name>@<alias>`.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.states import State

from flows import stages
from tasks.config import Params
from tasks.summary import RunSummary


@flow(name="pretrain", validate_parameters=False)
def pretrain_flow(params: Params, root: Path) -> RunSummary | State:
    """validate -> split -> pretrain -> register, on `params.data.source`."""
    with stages.tracked_flow("pretrain", params, root) as run:
        data_dir = run.paths.resolve(params.data.source)
        data = stages.validate_data(data_dir, params.validate, run)
        if not data.report.success:
            return stages.failed(data.report.message(data_dir))
        split = stages.split_data(data, data_dir, params.split, params.data.image_size, run)
        result = stages.pretrain_backbone(
            split, params.pretrain, params.data.image_size, data.lineage["data_version"], run
        )
        tags = stages.version_tags(run, data, params)
        registered = stages.register_backbone(result, split, params.pretrain, tags, run)
    return RunSummary(
        flow="pretrain",
        mlflow_run_id=run.run_id,
        data_version=data.lineage["data_version"],
        data_dvc_state=data.lineage["data_dvc_state"],
        images=split.sizes(),
        classes=split.class_names,
        stage_seconds=run.seconds,
        backbone=f"transferops CNN, width {params.pretrain.width}",
        test=result.test.metrics,
        registered=registered,
    )
