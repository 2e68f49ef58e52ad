"""The pretrain flow: a backbone trained on the source data, registered as a pretrained model.

The offline stand-in for ImageNet weights: `select` finds it as `registry:<name>@<alias>`.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.states import State

from flows.stages import evaluate, flowrun, split, validate
from flows.stages.pretrain import log_pretraining, pretrain_backbone, register_backbone
from tasks import modality
from tasks.core.config import Params
from tasks.reporting.summary import RunSummary


@flow(name="pretrain", validate_parameters=False)
def pretrain_flow(params: Params, root: Path, force: bool = False) -> RunSummary | State:
    """validate -> split -> pretrain -> register, on `params.data.source`. Unchanged stages
    are reused (`flows.stages.caching`); `force` recomputes them."""
    with flowrun.tracked_flow("pretrain", params, root, force=force) as run:
        data_dir = run.paths.resolve(params.data.source)
        data = validate.validated(run, data_dir, params)
        if not data.report.success:
            return flowrun.failed(data.report.message(data_dir))
        splits = split.splits(run, data, data_dir, params)
        split.log_datasets(run, data, splits)
        flowrun.name_run(run, "pretrain", data.lineage["data_version"][:8], f"cnn-w{params.pretrain.width}")
        result = flowrun.run_stage(
            run,
            pretrain_backbone,
            log_pretraining,
            data=splits,
            params=params.pretrain,
            encoding=modality.named("images", params).encoding(params.images.size),
            reproducibility=params.reproducibility,
            root=run.paths.root,
        )
        tags = flowrun.version_tags(run, data, params)
        registered = register_backbone(result, splits, params.pretrain, tags, run)
        summary = RunSummary(
            flow="pretrain",
            mlflow_run_id=run.run_id,
            data_version=data.lineage["data_version"],
            data_dvc_state=data.lineage["data_dvc_state"],
            examples=splits.sizes(),
            classes=splits.class_names,
            stage_seconds=run.seconds,
            reused=run.reused,
            backbone=f"transferops CNN, width {params.pretrain.width}",
            test=result.test.metrics,
            registered=registered,
            curves={"pretrain": result.history},
            **evaluate.test_details(result.test),
        )
        return flowrun.publish(run, summary, data.report.docs_dir)
