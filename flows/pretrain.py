"""The pretrain flow: a backbone trained on the source data, registered as a pretrained model.

The offline stand-in for ImageNet weights: `select` finds it as `registry:<name>@<alias>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.states import State

from flows import stages
from tasks.config import Params


@flow(name="pretrain", validate_parameters=False)
def pretrain_flow(params: Params, root: Path) -> dict[str, Any] | State:
    with stages.tracked_flow("pretrain", params, root) as run:
        data_dir = run.paths.resolve(params.data.source)
        data = stages.validate_data(data_dir, params.validate, run.run_id)
        if not data.report.success:
            return stages.failed(data.report.message(data_dir))
        split = stages.split_data(data.manifest, data_dir, params.split, params.data.image_size, run.run_id)
        registered = stages.pretrain_backbone(split, params.pretrain, params.data.image_size, run.run_id)
    return {
        "flow": "pretrain",
        "mlflow_run_id": run.run_id,
        "data_version": data.lineage["data_version"],
        "images": {s: len(getattr(split, s)) for s in ("train", "val", "test")},
        "classes": split.class_names,
        "registered": registered,
        "stage_seconds": stages.stage_timings(run.run_id),
    }
