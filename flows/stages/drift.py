"""The drift stage of a retrain: MMD² against the champion's training sample
(tasks/promotion/drift.py), and the retrain decision where people look."""

from __future__ import annotations

import mlflow
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.stages.caching import cached_stage
from flows.stages.flowrun import (
    FlowRun,
)
from tasks.core.config import (
    RetrainParams,
)
from tasks.data import datasets
from tasks.promotion import drift
from tasks.reporting.tracking import scratch_dir


@cached_stage("drift")
def measure_drift(
    data: datasets.SplitData, model_name: str, champion: str, params: RetrainParams
) -> drift.Measurement | None:
    """MMD² between version `champion`'s training images and this training split, on its backbone."""
    return drift.measure(model_name, champion, data.train, params.drift_samples, params.drift_permutations)


def log_drift(measured: drift.Measurement | None, run: FlowRun, reused: bool) -> str:
    if measured is None:
        mlflow.set_tag("drift", "champion keeps no reference sample")
        return "not measured: the champion keeps no reference sample"
    report = measured.report
    mlflow.log_metrics({"drift_mmd2": report.mmd2, "drift_p_value": report.p_value})
    mlflow.log_dict({**report.summary(), "null": report.null}, "drift.json")
    with scratch_dir() as tmp:
        mlflow.log_artifact(str(drift.plot(report, measured.reference, measured.current, tmp / "drift.png")))
    return f"MMD² {report.mmd2:.6f}, p={report.p_value:.3g} against the champion's training sample"


def publish_decision(run: FlowRun, decision: drift.RetrainDecision) -> None:
    """The retrain decision where people look: the log, the MLflow run, a Prefect artifact."""
    get_run_logger().info("retrain: %s: %s", "train" if decision.train else "skip", decision.reason)
    mlflow.MlflowClient().set_tag(run.run_id, "retrain_decision", decision.reason)
    create_markdown_artifact(
        key="retrain-decision",
        markdown=f"**{'train' if decision.train else 'skip'}**: {decision.reason}",
        description="Why this retrain trained or skipped",
    )
