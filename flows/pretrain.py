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
def pretrain_flow(params: Params, root: Path, force: bool = False) -> RunSummary | State:
    """validate -> split -> pretrain -> register, on `params.data.source`. Unchanged stages
    are reused (`flows.caching`); `force` recomputes them."""
    with stages.tracked_flow("pretrain", params, root, force=force) as run:
        data_dir = run.paths.resolve(params.data.source)
        data = stages.validated(run, data_dir, params)
        if not data.report.success:
            return stages.failed(data.report.message(data_dir))
        split = stages.splits(run, data, data_dir, params)
        stages.log_datasets(run, data, split)
        stages.name_run(run, "pretrain", data.lineage["data_version"][:8], f"cnn-w{params.pretrain.width}")
        result = stages.run_stage(
            run,
            stages.pretrain_backbone,
            stages.log_pretraining,
            data=split,
            params=params.pretrain,
            image_size=params.data.image_size,
            reproducibility=params.reproducibility,
            root=run.paths.root,
        )
        tags = stages.version_tags(run, data, params)
        registered = stages.register_backbone(result, split, params.pretrain, tags, run)
        summary = RunSummary(
            flow="pretrain",
            mlflow_run_id=run.run_id,
            data_version=data.lineage["data_version"],
            data_dvc_state=data.lineage["data_dvc_state"],
            images=split.sizes(),
            classes=split.class_names,
            stage_seconds=run.seconds,
            reused=run.reused,
            backbone=f"transferops CNN, width {params.pretrain.width}",
            test=result.test.metrics,
            registered=registered,
            curves={"pretrain": result.history},
            **stages.test_details(result.test),
        )
        return stages.publish(run, summary, data.report.docs_dir)
