"""The drift test (MMD² with a permutation p-value) and the retrain decision it feeds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_image_folder, sets
from PIL import Image

from flows.cli import main
from tasks.promotion import drift


def gaussians(shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, (200, 8)), rng.normal(0, 1, (200, 8)) + shift


def test_the_same_distribution_is_not_drift_and_a_shift_is():
    same = drift.mmd_test(*gaussians(0.0, seed=1), max_samples=200, permutations=200)
    moved = drift.mmd_test(*gaussians(0.5, seed=1), max_samples=200, permutations=200)
    assert same.p_value > 0.2
    assert moved.p_value == 1 / 201  # no permutation comes near: the smallest p it can give
    assert moved.mmd2 > 10 * same.mmd2
    assert len(moved.null) == 200 and moved.n_reference == moved.n_current == 200


def test_samples_are_capped_and_the_test_repeats_exactly():
    x, y = gaussians(0.3, seed=2)
    first = drift.mmd_test(x, y, max_samples=50, permutations=50, seed=7)
    assert (first.n_reference, first.n_current) == (50, 50)
    assert first == drift.mmd_test(x, y, max_samples=50, permutations=50, seed=7)


def test_the_decision_says_why():
    moved = drift.mmd_test(*gaussians(0.5, seed=1), max_samples=100, permutations=50)
    still = drift.mmd_test(*gaussians(0.0, seed=1), max_samples=100, permutations=50)
    assert drift.decide(None, True, None, 0.05, True) == drift.RetrainDecision(True, "no champion yet")
    assert not drift.decide("3", False, None, 0.05, False).train
    assert drift.decide("3", True, None, 0.05, True).reason.endswith("(no drift reference to compare)")
    assert drift.decide("3", True, still, 0.05, False).train  # changed data is trained by default
    kept = drift.decide("3", True, still, 0.05, True)
    assert not kept.train and "not significant at 0.05; require_drift is on" in kept.reason
    assert drift.decide("3", True, moved, 0.05, True).train


@pytest.mark.slow
def test_require_drift_skips_look_alike_data_and_trains_on_shifted_data(tmp_path, prefect_harness):
    root = tmp_path / "project"
    raw = make_image_folder(root / "data" / "raw", ["dog", "eel"], per_class=20, seed=1)
    args = [
        "--root",
        str(root),
        *sets(
            {
                "images.candidates": "[{uri: 'keras:MobileNetV3Small', weights: none, size: 32}]",
                "finetune.head_epochs": 3,
                "finetune.finetune_epochs": 0,
                "search.enabled": "false",
                "retrain.require_drift": "true",
            }
        ),
    ]
    assert main([*args, "train"]) == 0

    make_image_folder(raw, ["dog", "eel"], per_class=4, seed=2)  # more of the same
    assert main([*args, "retrain"]) == 0
    summary = json.loads((root / "reports" / "retrain.json").read_text())
    assert summary["skipped"].startswith("data changed since champion v1 but drift MMD²")
    assert summary["drift"]["p_value"] >= 0.05

    for path in sorted(raw.glob("*/*.png")):  # the same classes, photographed in negative
        Image.fromarray(255 - np.asarray(Image.open(path).convert("RGB"))).save(path)
    assert main([*args, "retrain"]) == 0
    summary = json.loads((root / "reports" / "retrain.json").read_text())
    assert summary["skipped"] is None and summary["registered"]["version"] == "2"
    assert summary["drift"]["p_value"] < 0.05
