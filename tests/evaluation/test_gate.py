"""The paired promotion gate: McNemar on the images the two models disagree on, a paired
bootstrap interval of the metric difference, and the guards."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from tasks.core.config import RegisterParams
from tasks.evaluation import gate

CLASSES = ["a", "b", "c", "d"]


def labels(accuracy: float, seed: int, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES), n)
    wrong = rng.random(n) > accuracy
    return y, np.where(wrong, (y + 1 + rng.integers(0, 3, n)) % len(CLASSES), y)


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
def test_scores_match_scikit_learn(metric):
    y, predicted = labels(0.7, seed=1)
    _, other = labels(0.6, seed=2)
    comparison = gate.compare(y, predicted, other, CLASSES, metric)
    score = (
        accuracy_score
        if metric == "accuracy"
        else lambda t, p: f1_score(t, p, average="macro", labels=range(4), zero_division=0)
    )
    assert comparison.challenger == pytest.approx(score(y, predicted))
    assert comparison.champion == pytest.approx(score(y, other))
    assert comparison.ci_low < comparison.delta < comparison.ci_high


def test_mcnemar_is_the_exact_binomial_on_discordant_pairs():
    assert gate.mcnemar(0, 0) == 1.0
    assert gate.mcnemar(10, 0) == pytest.approx(2 * 0.5**10)
    assert gate.mcnemar(6, 4) == gate.mcnemar(4, 6) > 0.5


def test_two_models_equally_good_are_not_told_apart():
    y, first = labels(0.8, seed=3)
    rng = np.random.default_rng(4)  # another model as good: 20 of its mistakes fixed, 20 new ones
    second = first.copy()
    fixed = rng.choice(np.flatnonzero(first != y), 20, replace=False)
    broken = rng.choice(np.flatnonzero(first == y), 20, replace=False)
    second[fixed], second[broken] = y[fixed], (y[broken] + 1) % 4
    comparison = gate.compare(y, second, first, CLASSES, "macro_f1")
    assert (comparison.only_challenger_right, comparison.only_champion_right) == (20, 20)
    assert comparison.p_value == 1.0 and comparison.ci_low < 0 < comparison.ci_high
    assert not gate.judge(comparison, RegisterParams(max_recall_drop=1.0)).promote


def test_a_clearly_better_model_is_promoted_with_its_numbers_in_words():
    y, champion = labels(0.6, seed=5)
    _, challenger = labels(0.9, seed=5)  # same draws, fewer mistakes
    comparison = gate.compare(y, challenger, champion, CLASSES, "macro_f1")
    verdict = gate.judge(comparison, RegisterParams())
    assert verdict.promote and verdict.reason.endswith(": promoted")
    assert comparison.p_value < 1e-6 and comparison.ci_low > 0.2
    assert verdict.reason.startswith(f"macro_f1 +{100 * comparison.delta:.1f} pts, 95% CI [+")


def test_a_class_that_loses_recall_blocks_promotion():
    y, champion = labels(0.6, seed=6)
    challenger = np.where(y == 2, (y + 1) % 4, y)  # perfect, except class c: always wrong
    comparison = gate.compare(y, challenger, champion, CLASSES, "accuracy")
    assert comparison.delta > 0 and comparison.recall_change["c"] < -0.5
    verdict = gate.judge(comparison, RegisterParams(max_recall_drop=0.1))
    assert not verdict.promote and "recall of 'c' drops" in verdict.reason
    assert gate.judge(comparison, RegisterParams(max_recall_drop=1.0)).promote


def test_the_floor_and_min_delta_hold_back_a_significant_gain():
    y, champion = labels(0.3, seed=7)
    _, challenger = labels(0.5, seed=7)
    comparison = gate.compare(y, challenger, champion, CLASSES, "accuracy")
    assert gate.judge(comparison, RegisterParams()).promote
    assert "below the floor 0.8" in gate.judge(comparison, RegisterParams(min_metric=0.8)).reason
    assert "not above min_delta 0.5" in gate.judge(comparison, RegisterParams(min_delta=0.5)).reason
