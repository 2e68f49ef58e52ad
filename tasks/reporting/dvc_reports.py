"""What DVC compares across commits and experiments: the numbers of a `pretrain` or `train` run,
written under `metrics/` and committed with `dvc.lock`.

- `metrics/<flow>.json`: numbers only (test metrics, LogME scores, images per split, epochs),
  so `dvc metrics diff` and `dvc exp show` have one numeric column each. Run ids, sentences and
  timings live in `reports/<flow>.json` and in MLflow, not here.
- `metrics/<flow>_history.csv`: one row per epoch of every training phase (`dvc plots`).
- `metrics/<flow>_confusion.csv`: one row per test image, actual and predicted class (DVC's
  `confusion` template counts them).

The files are deterministic for a deterministic run: an unchanged rerun leaves git clean.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from tasks.reporting.summary import RunSummary

FOLDER = "metrics"
DVC_STAGES = ("pretrain", "train")  # the stages of dvc.yaml
CURVE_COLUMNS = ("step", "phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy")


def numbers(summary: RunSummary) -> dict[str, Any]:
    """The comparable numbers of a run, nested by kind (DVC flattens them to `test.accuracy`)."""
    out: dict[str, Any] = {"test": {k: round(v, 6) for k, v in summary.test.items()}}
    if summary.logme:
        out["logme"] = {k: round(v, 6) for k, v in summary.logme.items()}
    out["examples"] = dict(summary.examples)
    if summary.curves:
        out["epochs"] = {phase: len(series.get("loss", [])) for phase, series in summary.curves.items()}
        best = [max(s["val_accuracy"]) for s in summary.curves.values() if s.get("val_accuracy")]
        if best:
            out["best_val_accuracy"] = round(max(best), 6)
    return out


def curve_rows(curves: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    """Every epoch of every phase in training order; `step` counts across phases."""
    rows: list[dict[str, Any]] = []
    for phase, series in curves.items():
        for epoch in range(len(series.get("loss", []))):
            row: dict[str, Any] = {"step": len(rows), "phase": phase, "epoch": epoch + 1}
            for name in CURVE_COLUMNS[3:]:
                values = series.get(name)
                row[name] = round(values[epoch], 6) if values and epoch < len(values) else ""
            rows.append(row)
    return rows


def confusion_rows(classes: list[str], matrix: list[list[int]]) -> list[dict[str, str]]:
    """The confusion matrix back as one (actual, predicted) row per test image."""
    return [
        {"actual": classes[i], "predicted": classes[j]}
        for i, row in enumerate(matrix)
        for j, count in enumerate(row)
        for _ in range(int(count))
    ]


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write(root: Path, summary: RunSummary) -> list[Path]:
    """Write the DVC files of `summary.flow` under `root/metrics/`; returns them."""
    folder = root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / f"{summary.flow}.json"]
    written[0].write_text(json.dumps(numbers(summary), indent=2, sort_keys=True) + "\n")
    if summary.curves:
        written.append(folder / f"{summary.flow}_history.csv")
        _write_csv(written[-1], CURVE_COLUMNS, curve_rows(summary.curves))
    if summary.confusion:
        written.append(folder / f"{summary.flow}_confusion.csv")
        rows = confusion_rows(summary.confusion["classes"], summary.confusion["matrix"])
        _write_csv(written[-1], ("actual", "predicted"), rows)
    return written
