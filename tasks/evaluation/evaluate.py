"""Evaluate: metrics, per-class report and confusion matrix from predicted probabilities."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

from tasks.core import progress
from tasks.core.files import printable
from tasks.evaluation import gate


@dataclass
class TestReport:
    """One model on one test split."""

    metrics: dict[str, float]  # accuracy, macro_f1
    per_class: dict[str, Any]  # scikit-learn's classification report
    confusion: np.ndarray  # rows: true class, columns: predicted
    class_names: list[str]
    predicted: np.ndarray  # the predicted class of each test image, in order
    intervals: dict[str, tuple[float, float]]  # 95% bootstrap interval of each metric
    calibration: dict[str, Any]  # expected calibration error and its bins (`calibration`)
    mistakes: list[dict[str, Any]]  # the most confident mistakes: index, true, predicted, confidence
    thumbnails: list[Any] | None = None  # how each is shown (`Encoding.preview`): an image or a text
    probabilities: np.ndarray | None = None  # of each class for each test example, in order


def predict(model: Any, images: Any, total: int | None = None, description: str = "evaluate") -> np.ndarray:
    """Class probabilities of a Keras classifier for uint8 images: an array, or batches of them
    (a `tf.data` stream of `total` images), predicted batch by batch with a progress bar."""
    if isinstance(images, np.ndarray):
        return np.asarray(model.predict(images.astype("float32"), verbose=0))
    out = []
    with progress.counting(description, total) as advance:
        for batch in images.as_numpy_iterator():
            out.append(np.asarray(model.predict_on_batch(batch.astype("float32"))))
            advance(len(batch))
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]))


def report(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    class_names: list[str],
    images: Sequence[Any] | Callable[[list[int]], Sequence[Any]] | None = None,
) -> TestReport:
    """The test report; `images` gives what the gallery of mistakes shows of each example (an
    image array or a text): all examples', or a function of the rows it needs (so only those
    few are read)."""
    wrong = confident_mistakes(y_true, probabilities)
    rows = [m["index"] for m in wrong]
    thumbnails = None
    if images is not None and wrong:
        thumbnails = list(images(rows)) if callable(images) else [images[i] for i in rows]
    return TestReport(
        metrics=metrics(y_true, probabilities),
        per_class=per_class_report(y_true, probabilities, class_names),
        confusion=confusion(y_true, probabilities, len(class_names)),
        class_names=class_names,
        predicted=probabilities.argmax(axis=1),
        intervals={
            m: gate.interval(y_true, probabilities.argmax(axis=1), len(class_names), m) for m in gate.METRICS
        },
        calibration=calibration(y_true, probabilities),
        mistakes=wrong,
        thumbnails=thumbnails,
        probabilities=probabilities,
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


def calibration(y_true: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Expected calibration error: over bins of confidence, the gap between how sure the model
    was and how often it was right, weighted by the images in each bin."""
    confidence = probabilities.max(axis=1)
    right = probabilities.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        members = which == b
        if not members.any():
            continue
        gap = abs(float(confidence[members].mean()) - float(right[members].mean()))
        ece += members.mean() * gap
        table.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "images": int(members.sum()),
                "confidence": float(confidence[members].mean()),
                "accuracy": float(right[members].mean()),
            }
        )
    return {"ece": float(ece), "bins": table}


def confident_mistakes(y_true: np.ndarray, probabilities: np.ndarray, top: int = 12) -> list[dict[str, Any]]:
    """The wrong predictions the model was surest of, surest first."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    wrong = np.flatnonzero(predicted != y_true)
    order = wrong[np.argsort(-confidence[wrong], kind="stable")][:top]
    return [
        {
            "index": int(i),
            "true": int(y_true[i]),
            "predicted": int(predicted[i]),
            "confidence": float(confidence[i]),
        }
        for i in order
    ]


def plot_reliability(calibrated: dict[str, Any], path: Path, title: str) -> Path:
    """The reliability diagram: accuracy against confidence per bin (the diagonal is perfect)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", label="perfectly calibrated")
    bins = calibrated["bins"]
    ax.bar(
        [(b["low"] + b["high"]) / 2 for b in bins],
        [b["accuracy"] for b in bins],
        width=[b["high"] - b["low"] for b in bins],
        edgecolor="black",
        alpha=0.7,
        label="accuracy in bin",
    )
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}: ECE {calibrated['ece']:.3f}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_mistakes(report: TestReport, path: Path, title: str) -> Path | None:
    """A gallery of the most confident mistakes: the example (an image, or a text's opening
    words), true -> predicted, confidence. Class names and texts are drawn as plain text (no
    math parsing, no markup)."""
    if report.thumbnails is None or not report.mistakes:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    texts = isinstance(report.thumbnails[0], str)
    columns = min(3 if texts else 6, len(report.mistakes))
    rows = -(-len(report.mistakes) // columns)
    width, height = (4.4, 2.6) if texts else (2.2, 2.4)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    names = report.class_names
    for ax, mistake, shown in zip(axes.ravel(), report.mistakes, report.thumbnails, strict=False):
        if texts:
            lines = textwrap.wrap(printable(shown), 48)[:8]
            ax.text(0, 1, "\n".join(lines), va="top", fontsize=7, wrap=True, parse_math=False, usetex=False)
        else:
            ax.imshow(shown)
        label = f"{names[mistake['true']]} -> {names[mistake['predicted']]}\n{mistake['confidence']:.2f}"
        ax.set_title(label, fontsize=8, parse_math=False)
    fig.suptitle(title, parse_math=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
