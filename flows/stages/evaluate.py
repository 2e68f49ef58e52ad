"""The evaluate stage: the new model and the champion on the same test images
(tasks/promotion/promote.py), with metrics, calibration and plots in MLflow."""

from __future__ import annotations

from typing import Any

import mlflow

from flows.stages.caching import cached_stage
from flows.stages.flowrun import (
    FlowRun,
)
from tasks.data import datasets
from tasks.evaluation import evaluate
from tasks.modality import Encoding
from tasks.models import finetune
from tasks.promotion import promote
from tasks.reporting.tracking import scratch_dir


@cached_stage("evaluate")
def evaluate_model(
    result: finetune.FinetuneResult,
    data: datasets.SplitData,
    encoding: Encoding,
    model_name: str,
    champion: str | None,
) -> promote.Evaluation:
    """Test metrics of the new model (its test images decoded as `pixels` says) and, on the
    same test images, of version `champion` (as it decodes them)."""
    return promote.evaluate_challenger(result.model, data, encoding, model_name, champion)


def log_evaluation(evaluation: promote.Evaluation, run: FlowRun, reused: bool) -> str:
    log_test_report(evaluation.challenger, "test_", "challenger (test split)")
    champion = evaluation.champion
    if champion.metrics is not None:
        mlflow.log_metrics({f"champion_test_{k}": v for k, v in champion.metrics.items()})
    mlflow.log_dict({k: v for k, v in vars(champion).items() if k != "predicted"}, "champion.json")
    line = f"{scores(evaluation.challenger.metrics)} on {len(evaluation.challenger.predicted)} test examples"
    if champion.version is not None:
        line += f"; champion v{champion.version}: {scores(champion.metrics or {}) or 'not comparable'}"
    return line


def scores(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def log_test_report(report: evaluate.TestReport, prefix: str, title: str) -> None:
    """Metrics, per-class report and confusion matrix of one model, in the active run."""
    mlflow.log_metrics({f"{prefix}{k}": v for k, v in report.metrics.items()})
    mlflow.log_metric(f"{prefix}ece", report.calibration["ece"])
    mlflow.log_dict(report.per_class, "per_class_report.json")
    mlflow.log_dict({"intervals": report.intervals, "calibration": report.calibration}, "test_details.json")
    shown = report.thumbnails or []
    texts = [{"text": s} if isinstance(s, str) else {} for s in shown]  # a text's opening words
    mistakes = [m | t for m, t in zip(report.mistakes, texts or [{}] * len(report.mistakes), strict=False)]
    mlflow.log_dict(mistakes, "confident_mistakes.json")
    with scratch_dir() as tmp:
        mlflow.log_artifact(
            str(evaluate.plot_reliability(report.calibration, tmp / "reliability.png", title))
        )
        gallery = evaluate.plot_mistakes(report, tmp / "confident_mistakes.png", f"{title}: surest mistakes")
        if gallery is not None:
            mlflow.log_artifact(str(gallery))
        png = tmp / "confusion_matrix.png"
        evaluate.plot_confusion(report.confusion, report.class_names, png, title)
        mlflow.log_artifact(str(png))


def test_details(report: evaluate.TestReport) -> dict[str, Any]:
    """What a RunSummary carries of a test report: the confusion matrix and per-class scores."""
    per_class = {
        c: {
            k: round(float(report.per_class[c][k]), 6) for k in ("precision", "recall", "f1-score", "support")
        }
        for c in report.class_names
        if c in report.per_class
    }
    matrix = {"classes": list(report.class_names), "matrix": report.confusion.tolist()}
    return {"confusion": matrix, "per_class": per_class}
