"""The promotion gate on evidence: challenger and champion on the same test images, paired.

A higher score on a small test set is weak evidence: on the demo's 139 test images one image
is 0.7 points, and two trainings that differ only in their seed differ by that much. So the
gate looks at the pairs:

- an exact McNemar test on the images one model gets right and the other wrong (the images
  both get right or both wrong say nothing about which is better);
- a paired bootstrap confidence interval of the metric difference (the same resampled images
  scored for both models);
- guards: no class's recall may drop by more than `max_recall_drop`, and the challenger's
  metric must reach `min_metric`.

It promotes only when the difference is above `min_delta`, its interval lies above 0 and the
McNemar p-value is below `alpha`. With no champion the first version becomes champion.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import binomtest

from tasks.core.config import RegisterParams

METRICS = ("accuracy", "macro_f1")


@dataclass(frozen=True)
class Comparison:
    """The challenger against the champion on the same test images."""

    metric: str
    challenger: float
    champion: float
    delta: float  # challenger - champion
    ci_low: float  # paired bootstrap interval of delta
    ci_high: float
    level: float  # of the interval, e.g. 0.95
    p_value: float  # exact McNemar, two-sided
    only_challenger_right: int  # images the challenger gets right and the champion wrong
    only_champion_right: int
    recall_change: dict[str, float] = field(default_factory=dict)  # class -> challenger - champion

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def words(self) -> str:
        """ "+2.1 pts, 95% CI [+0.4, +3.8], p=0.01" (points: metric x 100)."""
        return (
            f"{self.metric} {100 * self.delta:+.1f} pts, {self.level:.0%} CI "
            f"[{100 * self.ci_low:+.1f}, {100 * self.ci_high:+.1f}], p={self.p_value:.2g} "
            f"(McNemar: {self.only_challenger_right} images only the challenger gets right, "
            f"{self.only_champion_right} only the champion)"
        )


def _confusions(y_true: np.ndarray, y_pred: np.ndarray, rows: np.ndarray, classes: int) -> np.ndarray:
    """Confusion matrices of each resample: (resamples, classes, classes)."""
    codes = y_true[rows] * classes + y_pred[rows]  # (resamples, n)
    offsets = np.arange(len(rows))[:, None] * classes * classes
    counts = np.bincount((codes + offsets).ravel(), minlength=len(rows) * classes * classes)
    return counts.reshape(len(rows), classes, classes)


def _score(confusions: np.ndarray, metric: str) -> np.ndarray:
    """`metric` of each confusion matrix; macro-F1 counts a class with no support and no
    predictions as 0, as scikit-learn's `zero_division=0` does."""
    tp = np.diagonal(confusions, axis1=1, axis2=2).astype("float64")
    if metric == "accuracy":
        return tp.sum(1) / confusions.sum((1, 2))
    fp = confusions.sum(1) - tp
    fn = confusions.sum(2) - tp
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return f1.mean(1)


def interval(
    y_true: np.ndarray,
    predicted: np.ndarray,
    classes: int,
    metric: str,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap (percentile) interval of one model's `metric` on these test images."""
    y_true, predicted = np.asarray(y_true, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    rows = np.random.default_rng(seed).integers(0, len(y_true), (resamples, len(y_true)))
    low, high = np.quantile(
        _score(_confusions(y_true, predicted, rows, classes), metric), [(1 - level) / 2, (1 + level) / 2]
    )
    return float(low), float(high)


def mcnemar(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: under no difference, each discordant image is a fair coin."""
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue)


def compare(
    y_true: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    class_names: list[str],
    metric: str,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Comparison:
    """Paired comparison of two models' predicted labels on the same test images."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r}: expected one of {METRICS}")
    y_true, challenger, champion = (np.asarray(a, dtype=np.int64) for a in (y_true, challenger, champion))
    k, n = len(class_names), len(y_true)
    whole = np.arange(n)[None, :]
    new = float(_score(_confusions(y_true, challenger, whole, k), metric)[0])
    old = float(_score(_confusions(y_true, champion, whole, k), metric)[0])
    rows = np.random.default_rng(seed).integers(0, n, (resamples, n))
    deltas = _score(_confusions(y_true, challenger, rows, k), metric) - _score(
        _confusions(y_true, champion, rows, k), metric
    )
    low, high = np.quantile(deltas, [(1 - level) / 2, (1 + level) / 2])
    new_right, old_right = challenger == y_true, champion == y_true
    only_new, only_old = int((new_right & ~old_right).sum()), int((old_right & ~new_right).sum())
    recall_change = {}
    for index, name in enumerate(class_names):
        members = y_true == index
        if members.any():
            recall_change[name] = float(new_right[members].mean() - old_right[members].mean())
    return Comparison(
        metric,
        new,
        old,
        new - old,
        float(low),
        float(high),
        level,
        mcnemar(only_new, only_old),
        only_new,
        only_old,
        recall_change,
    )


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str


def judge(comparison: Comparison, params: RegisterParams) -> Verdict:
    """The gate's rules (params.register), in order; the reason gives the numbers in words."""
    min_delta, alpha, min_metric = params.min_delta, params.alpha, params.min_metric
    max_recall_drop = params.max_recall_drop
    said = comparison.words()
    if comparison.challenger < min_metric:
        return Verdict(
            False, f"{comparison.metric} {comparison.challenger:.4f} is below the floor {min_metric}: kept"
        )
    if comparison.recall_change:
        worst = min(comparison.recall_change, key=comparison.recall_change.__getitem__)
        drop = -comparison.recall_change[worst]
        if drop > max_recall_drop:
            return Verdict(
                False,
                f"{said}; recall of {worst!r} drops {100 * drop:.1f} pts "
                f"(guard: {100 * max_recall_drop:.1f}): kept",
            )
    if comparison.delta <= min_delta:
        return Verdict(False, f"{said}; not above min_delta {min_delta}: kept")
    if comparison.ci_low <= 0 or comparison.p_value >= alpha:
        return Verdict(False, f"{said}; not significant at {alpha}: kept")
    return Verdict(True, f"{said}: promoted")
