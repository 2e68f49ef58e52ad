"""The benchmark's paired comparison of two arms (bench/heldout.py): its interval is centred on
the real difference, is zero-width for identical arms and narrows with more test images."""

from __future__ import annotations

import numpy as np

from bench import heldout


def test_identical_arms_differ_by_exactly_nothing():
    right = np.random.default_rng(0).integers(0, 2, (3, 500))
    found = heldout.paired_difference(right, right, replicates=200)
    assert found["difference"] == found["low"] == found["high"] == 0.0


def test_the_interval_holds_the_difference_and_narrows_with_more_images():
    rng = np.random.default_rng(1)
    widths = []
    for images in (200, 5000):
        a = (rng.random((3, images)) < 0.92).astype(np.int8)  # 92% against 90%, independent errors
        b = (rng.random((3, images)) < 0.90).astype(np.int8)
        found = heldout.paired_difference(a, b, replicates=1000)
        assert found["low"] < found["difference"] < found["high"]
        assert found["low"] < 0.02 < found["high"] or images == 200
        widths.append(found["high"] - found["low"])
    assert widths[1] < widths[0] / 3


def test_predictions_round_trip_as_digits():
    probabilities = np.eye(5)[[3, 0, 4, 4, 1]]
    digits = heldout.as_digits(probabilities)
    assert digits == "30441"
    assert heldout.correct(digits, np.array([3, 1, 4, 0, 1])).tolist() == [1, 0, 1, 0, 1]
