"""What evaluate reports beyond accuracy: calibration, intervals, the surest mistakes."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tasks.evaluation import evaluate


def test_calibration_error_is_the_weighted_gap_between_confidence_and_accuracy():
    y = np.array([0, 1, 0, 1])
    sure_and_right = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert evaluate.calibration(y, sure_and_right)["ece"] == 0.0
    sure_and_half_wrong = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.1, 0.9]])
    calibrated = evaluate.calibration(y, sure_and_half_wrong)  # 90% sure, right 3 times in 4
    assert abs(calibrated["ece"] - 0.15) < 1e-12
    assert [b["images"] for b in calibrated["bins"]] == [4]


def test_the_surest_mistakes_come_first_and_the_gallery_draws_hostile_names_as_text(tmp_path):
    y = np.array([0, 0, 1, 1, 2])
    probabilities = np.array(
        [[0.2, 0.7, 0.1], [0.9, 0.05, 0.05], [0.05, 0.05, 0.9], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]]
    )
    images = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    names = ["$\\frac{a}{", "<b>bee</b>", "cat"]  # mathtext and markup must come out as text
    report = evaluate.report(y, probabilities, names, images)
    assert [(m["index"], m["predicted"]) for m in report.mistakes] == [(2, 2), (0, 1), (3, 0)]
    assert report.mistakes[0]["confidence"] == 0.9
    assert (report.thumbnails == images[[2, 0, 3]]).all()
    low, high = report.intervals["accuracy"]
    assert 0 <= low <= report.metrics["accuracy"] == 0.4 <= high <= 1
    gallery = evaluate.plot_mistakes(report, tmp_path / "mistakes.png", "surest mistakes")
    assert Image.open(gallery).size[0] > 100
    reliability = evaluate.plot_reliability(report.calibration, tmp_path / "reliability.png", "test")
    assert Image.open(reliability).size[0] > 100
    assert evaluate.plot_mistakes(evaluate.report(y, probabilities, names), tmp_path / "x.png", "t") is None
