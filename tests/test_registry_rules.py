import base64

import numpy as np
import pytest

from tasks.images import ImageError
from tasks.promotion import ChampionScores, decide
from tasks.serving import image_bytes, predictions_frame


def test_first_model_becomes_champion():
    decision = decide({"macro_f1": 0.1}, ChampionScores(), "macro_f1", 0.0)
    assert decision.promote and decision.reason == "no champion yet"


def test_a_champion_that_cannot_be_compared_is_kept():
    champion = ChampionScores("3", None, "champion v3 knows classes ['a'], this data ['b']")
    decision = decide({"macro_f1": 1.0}, champion, "macro_f1", 0.0)
    assert not decision.promote
    assert decision.reason.startswith("champion not comparable (champion v3 knows")


@pytest.mark.parametrize(
    ("new", "old", "delta", "promote"),
    [(0.81, 0.80, 0.0, True), (0.80, 0.80, 0.0, False), (0.81, 0.80, 0.02, False), (0.7, 0.8, 0.0, False)],
)
def test_gate_needs_a_real_improvement(new, old, delta, promote):
    decision = decide({"macro_f1": new}, ChampionScores("1", {"macro_f1": old}), "macro_f1", delta)
    assert decision.promote is promote
    assert "macro_f1" in decision.reason


def test_missing_metric_keeps_the_champion():
    assert not decide({"accuracy": 1.0}, ChampionScores("1", {"accuracy": 0.0}), "macro_f1", 0.0).promote


def test_the_served_model_takes_bytes_never_paths(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"\x89PNG-bytes")
    assert image_bytes(base64.b64encode(b"abc").decode()) == b"abc"
    assert image_bytes(b"raw") == b"raw"
    with pytest.raises(ImageError, match="never file paths"):
        image_bytes(str(path))  # exists, and is still not read
    with pytest.raises(ImageError, match="expected base64 text or bytes, got int"):
        image_bytes(3)


def test_predictions_frame_names_classes_and_nulls_failed_rows():
    frame = predictions_frame(
        np.array([[0.2, 0.8], [0.6, 0.4], [0.0, 0.0]]), ["cat", "dog"], [None, None, "bad"]
    )
    assert frame["label"].tolist() == ["dog", "cat", None]
    assert frame["confidence"].tolist() == [0.8, 0.6, None]
    assert list(frame.columns) == ["label", "confidence", "cat", "dog", "error"]
    assert frame.loc[2, ["cat", "dog"]].tolist() == [None, None]
