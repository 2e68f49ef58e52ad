"""The pretrain flow: a backbone trained on the source data, registered as a pretrained model.

The offline stand-in for ImageNet weights: `select` finds it as `registry:<name>@<alias>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, runtime
from prefect.states import Failed, State

from flows import stages
from tasks import lineage, tracking
from tasks.config import Params, Paths


@flow(name="pretrain", validate_parameters=False)
def pretrain_flow(params: Params, root: Path) -> dict[str, Any] | State:
    paths = Paths.from_root(root)
    data_dir = paths.resolve(params.data.source)
    tracking.configure(paths.mlflow_dir)
    tags = {"git_commit": lineage.git_commit(paths.root), "prefect_flow_run_id": str(runtime.flow_run.id)}
    with tracking.flow_run("pretrain", tags, params.as_dict()) as parent:
        run_id = parent.info.run_id
        data = stages.validate_data(data_dir, params.validate, run_id)
        mlflow.set_tags(data.lineage)
        if not data.report.success:
            mlflow.end_run("FAILED")
            return Failed(message=data.report.message(data_dir))
        split = stages.split_data(data.manifest, data_dir, params.split, params.data.image_size, run_id)
        registered = stages.pretrain_backbone(split, params.pretrain, params.data.image_size, run_id)
    return {
        "flow": "pretrain",
        "mlflow_run_id": run_id,
        "data_version": data.lineage["data_version"],
        "images": {s: len(getattr(split, s)) for s in ("train", "val", "test")},
        "classes": split.class_names,
        "registered": registered,
        "stage_seconds": stages.stage_timings(run_id),
    }
