"""Selection scores every candidate at its own input size and keeps frozen features on disk,
where the head phase of fine-tuning finds them again; a cached selection holds no images."""

import json
import pickle

import numpy as np
from conftest import make_image_folder

from tasks.core.config import Candidate, SplitParams
from tasks.data.datasets import load_folder
from tasks.modality.pixels import Images, Pixels
from tasks.models import features
from tasks.models.backbones import build_backbone
from tasks.selection.candidates import COSTS, longest_first, score_candidates


def two_candidates(tmp_path, classes: list[str], per_class: int):
    """Images of `classes`, and two candidates: a small saved backbone at 16 px (its file) and
    MobileNetV3Small untrained at 48 px."""
    folder = make_image_folder(tmp_path / "raw", classes, per_class=per_class, size=40)
    small = tmp_path / "small.keras"
    build_backbone(16, width=4).save(small)
    candidates = (
        Candidate(uri=f"file:{small}"),
        Candidate(uri="keras:MobileNetV3Small", weights="none", size=48),
    )
    return load_folder(folder, SplitParams(), Images(max_pixels=40_000_000)), small, candidates


def test_each_candidate_at_its_own_size_and_features_kept_on_disk(tmp_path):
    data, small, candidates = two_candidates(tmp_path, ["a", "b", "c"], 12)
    root = tmp_path / "project"
    chosen = score_candidates(candidates, data.train, 2000, 0, Images(), top_k=2, root=root)
    sizes = {chosen.uri: chosen.encoding.size, **{r.uri: r.encoding.size for r in chosen.runners_up}}
    assert sizes == {f"file:{small}": 16, "keras:MobileNetV3Small": 48}
    kept = sorted((root / features.FEATURES_DIR).glob("*.npy"))
    assert len(kept) == 2 and not list((root / features.FEATURES_DIR).glob(".*partial"))
    stamps = {p: p.stat().st_mtime_ns for p in kept}

    again = score_candidates(candidates, data.train, 2000, 0, Images(), top_k=2, root=root)
    assert again.scores == chosen.scores  # read back, not computed again
    assert {p: p.stat().st_mtime_ns for p in kept} == stamps
    # the head phase asks for the same split with the same backbone: the same file
    train_features = features.features(
        chosen.backbone, chosen.backbone_id, data.train, chosen.encoding, root, "train features"
    )
    assert isinstance(train_features, np.memmap) and len(train_features) == len(data.train)
    assert sorted((root / features.FEATURES_DIR).glob("*.npy")) == kept

    # what Prefect caches of the select and split stages: paths and labels, no pixels
    assert len(pickle.dumps(data)) < 20_000
    assert not any(isinstance(v, np.ndarray) and v.ndim > 1 for v in vars(data.train).values())


def test_features_computed_by_other_code_are_not_reused(tmp_path, monkeypatch):
    """The feature cache is keyed by the code that decodes and runs the backbone too: after a
    change to it (a fix to the decoder, say) the features are computed again."""
    folder = make_image_folder(tmp_path / "raw", ["a", "b"], per_class=6, size=20)
    data = load_folder(folder, SplitParams(), Images(max_pixels=40_000_000))
    backbone, pixels = build_backbone(16, width=4), Pixels(16)
    root = tmp_path / "project"
    features.features(backbone, "file:x", data.train, pixels, root)
    assert "tasks.modality.images" in features.codekey.closure(("tasks.models.features",))
    monkeypatch.setattr(features, "code_version", lambda: "another decoder")
    features.features(backbone, "file:x", data.train, pixels, root)
    assert len(list((root / features.FEATURES_DIR).glob("*.npy"))) == 2


def test_candidates_start_slowest_first_by_what_the_last_scoring_measured(tmp_path):
    data, small, candidates = two_candidates(tmp_path, ["a", "b"], 8)
    root = tmp_path / "project"
    assert longest_first(candidates, root) == [0, 1]  # never scored: params' order
    first = score_candidates(candidates, data.train, 2000, 0, Images(), root=root)
    costs = json.loads((root / COSTS).read_text())
    assert sorted(costs) == sorted([f"file:{small}@own size", "keras:MobileNetV3Small@48"])
    assert all(seconds > 0 for seconds in costs.values())
    measured = [costs[f"file:{small}@own size"], costs["keras:MobileNetV3Small@48"]]
    assert longest_first(candidates, root) == sorted(range(2), key=lambda i: -measured[i])

    for slowest, order in ((f"file:{small}@own size", [0, 1]), ("keras:MobileNetV3Small@48", [1, 0])):
        (root / COSTS).write_text(json.dumps({name: 1.0 if name == slowest else 0.01 for name in costs}))
        assert longest_first(candidates, root) == order
        # started in that order, reported in params' order with the same scores
        again = score_candidates(candidates, data.train, 2000, 0, Images(), root=root)
        assert list(again.scores) == list(first.scores) and again.scores == first.scores

    (root / COSTS).write_text("{not json")  # a damaged file: params' order, then measured again
    assert longest_first(candidates, root) == [0, 1]
    score_candidates(candidates, data.train, 2000, 0, Images(), root=root)
    assert sorted(json.loads((root / COSTS).read_text())) == sorted(costs)
