"""The validate stage: ingest and Great Expectations on the data folder (tasks/data/validate.py)."""

from __future__ import annotations

from pathlib import Path

import mlflow

from flows.stages.caching import cached_stage, stage_key
from flows.stages.flowrun import (
    FlowRun,
    run_stage,
    tag_parent,
)
from tasks import modality
from tasks.core.config import (
    Params,
    ValidateParams,
)
from tasks.data import validate as validation
from tasks.modality import Modality
from tasks.reporting.tracking import scratch_dir


def validated(run: FlowRun, data_dir: Path, params: Params) -> validation.ValidatedData:
    """The validate stage, as every flow runs it (Data Docs under .transferops/data_docs)."""
    docs_root = run.paths.root / ".transferops" / "data_docs"
    return run_stage(
        run,
        validate_data,
        log_validation,
        data_dir=data_dir,
        params=params.validate,
        modality=modality.from_params(params, data_dir),
        docs_root=docs_root,
    )


@cached_stage("validate", folders=("data_dir",))
def validate_data(
    data_dir: Path, params: ValidateParams, modality: Modality, docs_root: Path
) -> validation.ValidatedData:
    """Ingest (hash + inspect every file) and run the Great Expectations suites; the Data Docs
    go to `docs_root/<key>`."""
    return validation.validate_folder(data_dir, params, docs_root / stage_key()[:16], modality)


def log_validation(data: validation.ValidatedData, run: FlowRun, reused: bool) -> str:
    tag_parent(run, data.lineage)
    mlflow.log_metrics(data.report.statistics)
    with scratch_dir() as tmp:
        manifest_path = tmp / "manifest.parquet"
        data.manifest.to_parquet(manifest_path)
        mlflow.log_artifact(str(manifest_path))
    docs = data.report.docs_dir
    if docs is not None and docs.is_dir() and not reused:  # once, by the run that made them
        mlflow.log_artifacts(str(docs), "data_docs")
    mlflow.log_dict(
        {"success": data.report.success, "problems": data.report.problems, "ignored": data.report.ignored},
        "validation.json",
    )
    if not data.report.success:
        mlflow.set_tag("outcome", "validation failed")
        return f"FAILED: {len(data.report.problems)} problem(s) in {data.lineage['data_path']}"
    classes = data.manifest["label"].nunique()
    ignored = f", {len(data.report.ignored)} hidden files or folders skipped" if data.report.ignored else ""
    return (
        f"{len(data.manifest)} {data.modality.name} in {classes} classes passed every expectation{ignored}; "
        f"data version {data.lineage['data_version'][:8]}"
    )
