"""Evaluate: metrics, per-class report and confusion matrix from predicted probabilities."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

from tasks import gate


@dataclass
class TestReport:
    """One model on one test split."""

    metrics: dict[str, float]  # accuracy, macro_f1
    per_class: dict[str, Any]  # scikit-learn's classification report
    confusion: np.ndarray  # rows: true class, columns: predicted
    class_names: list[str]
    predicted: np.ndarray  # the predicted class of each test image, in order
    intervals: dict[str, tuple[float, float]]  # 95% bootstrap interval of each metric


def predict(model: Any, images: np.ndarray) -> np.ndarray:
    """Class probabilities of a Keras classifier for uint8 images."""
    return np.asarray(model.predict(images.astype("float32"), verbose=0))


def report(y_true: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> TestReport:
    return TestReport(
        metrics=metrics(y_true, probabilities),
        per_class=per_class_report(y_true, probabilities, class_names),
        confusion=confusion(y_true, probabilities, len(class_names)),
        class_names=class_names,
        predicted=probabilities.argmax(axis=1),
        intervals={
            m: gate.interval(y_true, probabilities.argmax(axis=1), len(class_names), m) for m in gate.METRICS
        },
    )


def metrics(y_true: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 (every class counts the same, whatever its size)."""
    y_pred = probabilities.argmax(axis=1)
    labels = np.arange(probabilities.shape[1])
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }


def per_class_report(y_true: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> dict:
    """Precision, recall, F1 and support per class (scikit-learn's report, as a dict)."""
    return classification_report(
        y_true,
        probabilities.argmax(axis=1),
        labels=np.arange(len(class_names)),
        target_names=class_names,
        output_dict=True,
        zero_division=0,
    )


def confusion(y_true: np.ndarray, probabilities: np.ndarray, num_classes: int) -> np.ndarray:
    return confusion_matrix(y_true, probabilities.argmax(axis=1), labels=np.arange(num_classes))


def plot_confusion(matrix: np.ndarray, class_names: list[str], path: Path, title: str) -> Path:
    """Write the confusion matrix as a PNG (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(class_names), 0.8 + 0.6 * len(class_names)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(value),
            ha="center",
            va="center",
            color="white" if value > threshold else "black",
            fontsize=8,
        )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
