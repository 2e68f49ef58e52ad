"""Selection scores every candidate at its own input size and keeps frozen features on disk,
where the head phase of fine-tuning finds them again; a cached selection holds no images."""

import pickle

import numpy as np
from conftest import make_image_folder

from tasks.core.config import Candidate, SplitParams
from tasks.data.datasets import load_folder
from tasks.models import features
from tasks.models.backbones import build_backbone
from tasks.selection.candidates import score_candidates


def test_each_candidate_at_its_own_size_and_features_kept_on_disk(tmp_path):
    folder = make_image_folder(tmp_path / "raw", ["a", "b", "c"], per_class=12, size=40)
    data = load_folder(folder, SplitParams(), 40_000_000)
    small = tmp_path / "small.keras"
    build_backbone(16, width=4).save(small)
    candidates = (
        Candidate(uri=f"file:{small}"),
        Candidate(uri="keras:MobileNetV3Small", weights="none", image_size=48),
    )
    root = tmp_path / "project"
    chosen = score_candidates(candidates, data.train, 2000, 0, top_k=2, root=root)
    sizes = {chosen.uri: chosen.pixels.size, **{r.uri: r.pixels.size for r in chosen.runners_up}}
    assert sizes == {f"file:{small}": 16, "keras:MobileNetV3Small": 48}
    kept = sorted((root / features.FEATURES_DIR).glob("*.npy"))
    assert len(kept) == 2 and not list((root / features.FEATURES_DIR).glob(".*partial"))
    stamps = {p: p.stat().st_mtime_ns for p in kept}

    again = score_candidates(candidates, data.train, 2000, 0, top_k=2, root=root)
    assert again.scores == chosen.scores  # read back, not computed again
    assert {p: p.stat().st_mtime_ns for p in kept} == stamps
    # the head phase asks for the same split with the same backbone: the same file
    train_features = features.features(
        chosen.backbone, chosen.backbone_id, data.train, chosen.pixels, root, "train features"
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
    data = load_folder(folder, SplitParams(), 40_000_000)
    backbone, pixels = build_backbone(16, width=4), features.Pixels(16)
    root = tmp_path / "project"
    features.features(backbone, "file:x", data.train, pixels, root)
    assert "tasks.data.images" in features.codekey.closure(("tasks.models.features",))
    monkeypatch.setattr(features, "code_version", lambda: "another decoder")
    features.features(backbone, "file:x", data.train, pixels, root)
    assert len(list((root / features.FEATURES_DIR).glob("*.npy"))) == 2
