"""The model card: a short Markdown page on every registered version (its MLflow description,
and `model_card.md` among the register run's artifacts), so the registry page of a version
says what it is without opening a run: data, backbone and how it was chosen, params, test
metrics with intervals beside the champion's, the gate's decision, known limits."""

from __future__ import annotations

import json
from typing import Any

from tasks.core.markdown import code, table


def model_card(
    model: str,
    version: str,
    tags: dict[str, str],
    counts: dict[str, dict[str, int]],
    metrics: dict[str, float],
    intervals: dict[str, tuple[float, float]],
    per_class: dict[str, Any],
    champion: tuple[str | None, dict[str, float] | None],
    reason: str,
) -> str:
    """Markdown for `model` version `version`. Names come from folders: they are shown in code
    spans, with backticks and pipes taken out, so a hostile name cannot inject markup."""
    params = json.loads(tags.get("params", "{}"))
    classes = list(next(iter(counts.values()), {}))
    champion_version, champion_metrics = champion
    lines = [f"# {code(model)} v{version}", "", f"**Promotion gate**: {reason}", "", "## Data", ""]
    lines.append(
        f"Data version {code(tags.get('data_version', '?'))} ({tags.get('data_dvc_state', '?')}), "
        f"from {code(tags.get('data_path', '?'))}; model input: {code(tags.get('input', '?'))}. "
        "Examples per split and class:"
    )
    split_rows = [[code(c), *(counts[s].get(c, 0) for s in counts)] for c in classes]
    lines += ["", *table(["class", *counts], split_rows)]
    scores = json.loads(tags.get("logme", "{}") or "{}")
    how = (
        "LogME on frozen features: " + ", ".join(f"{code(k)} {v:.4f}" for k, v in scores.items())
        if scores
        else "warm start from the champion"
    )
    finetune = code(json.dumps(params.get("finetune", {}), sort_keys=True))
    lines += [
        "",
        "## Model",
        "",
        f"Backbone {code(tags.get('backbone', '?'))} (version {code(tags.get('backbone_version', '?'))}), "
        f"chosen by {how}. Fine-tuning params: {finetune}. "
        f"Code {code(tags.get('git_commit', '?'))}, lock file {code(tags.get('lock_sha256', '?')[:12])}.",
        "",
        f"## Test metrics ({sum(counts.get('test', {}).values())} test images)",
        "",
    ]
    header = ["metric", "this version", "95% interval"]
    if champion_metrics:
        header.append(f"champion v{champion_version}, same images")
    rows = []
    for name, value in metrics.items():
        low, high = intervals.get(name, (float("nan"), float("nan")))
        row = [name, f"{value:.4f}", f"[{low:.4f}, {high:.4f}]"]
        if champion_metrics:
            row.append(f"{champion_metrics.get(name, float('nan')):.4f}")
        rows.append(row)
    lines += table(header, rows)
    class_rows = [
        [
            code(c),
            *(f"{per_class[c][k]:.3f}" for k in ("precision", "recall", "f1-score")),
            per_class[c]["support"],
        ]
        for c in classes
        if c in per_class
    ]
    lines += ["", "Per class:", "", *table(["class", "precision", "recall", "f1", "support"], class_rows)]
    n_test = sum(counts.get("test", {}).values()) or 1
    lines += [
        "",
        "## Known limits",
        "",
        f"- The test split holds {n_test} images: one is {100 / n_test:.1f} points (read the intervals).",
        f"- It knows {len(classes)} classes ({', '.join(code(c) for c in classes)}); any other image gets "
        "one of them, possibly with high confidence.",
        "- Measured on images like its training data (same source and split by content hash); "
        "`transferops retrain` measures drift against a sample of its training images.",
    ]
    return "\n".join(lines) + "\n"
