import base64

import numpy as np
import pytest

from tasks.core.config import RegisterParams
from tasks.evaluation.evaluate import report
from tasks.modality.images import ImageError, image_bytes
from tasks.promotion.promote import ChampionScores, Evaluation, class_columns, decide
from tasks.registry.serving import predictions_frame


def evaluation(predicted: list[int], champion: ChampionScores) -> Evaluation:
    probabilities = np.eye(2)[predicted]
    return Evaluation(report(np.array(Y), probabilities, ["a", "b"]), champion)


Y = [0] * 50 + [1] * 50


def test_first_model_becomes_champion():
    decision = decide(evaluation(Y, ChampionScores()), np.array(Y), RegisterParams())
    assert decision.promote and decision.reason == "no champion yet" and decision.comparison is None


def test_a_champion_that_cannot_be_compared_is_kept():
    champion = ChampionScores("3", None, "champion v3 knows classes ['a'], this data ['b']")
    decision = decide(evaluation(Y, champion), np.array(Y), RegisterParams())
    assert not decision.promote
    assert decision.reason.startswith("champion not comparable (champion v3 knows")


def test_the_gate_pairs_the_same_images_and_records_its_numbers():
    worse = [1 - y if i % 4 == 0 else y for i, y in enumerate(Y)]  # wrong on every 4th image
    champion = ChampionScores("1", {"macro_f1": 0.75}, predicted=worse)
    decision = decide(evaluation(Y, champion), np.array(Y), RegisterParams())
    assert decision.promote and decision.reason.startswith("vs champion v1: macro_f1 +25.0 pts, 95% CI [+")
    assert decision.comparison.only_challenger_right == 25 and decision.comparison.only_champion_right == 0


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
    assert list(frame.columns) == ["label", "confidence", "p:cat", "p:dog", "error"]
    assert frame.loc[2, ["p:cat", "p:dog"]].tolist() == [None, None]


def test_classes_named_like_the_frames_own_columns_keep_apart():
    classes = ["confidence", "error", "label"]
    frame = predictions_frame(np.array([[0.1, 0.2, 0.7], [0.5, 0.3, 0.2]]), classes, [None, None])
    assert frame["label"].tolist() == ["label", "confidence"]
    assert frame["confidence"].tolist() == [0.7, 0.5]
    assert frame["error"].isna().all()
    assert frame["p:error"].tolist() == [0.2, 0.3]
    assert class_columns(list(frame.columns)) == (["p:confidence", "p:error", "p:label"], classes)
    # a version registered before the prefix: its class columns are the others
    assert class_columns(["label", "confidence", "cat", "dog", "error"]) == (["cat", "dog"], ["cat", "dog"])
