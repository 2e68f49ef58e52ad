"""`top-n` trials on cached activations (tasks/search/cut.py): the backbone cut below its top n
layers gives the same output as the whole; a trial trained on the cut trains the classifier that
is kept, and leaves every layer below the cut as it was."""

from __future__ import annotations

import keras
import numpy as np
from test_strategy import PIXELS, images, pretrained_backbone

from tasks.core.config import FinetuneParams
from tasks.modality.pixels import Augment
from tasks.models.backbones import build_backbone
from tasks.models.features import row_batches
from tasks.models.trainer import build_trainer
from tasks.search import cut


def test_the_backbone_cut_below_its_top_layers_is_the_backbone():
    backbone = build_backbone(32, 4, seed=1)
    x = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3)).astype("float32")
    whole = backbone.predict(x, verbose=0)
    for n in (1, 2, 4, 6):  # the stand-in has 6 convolutions
        where = cut.cut(backbone, n)
        assert where is not None and where.depth == n
        below = where.bottom.predict(x, verbose=0)
        np.testing.assert_allclose(where.top.predict(below, verbose=0), whole, rtol=1e-5, atol=1e-5)
        unfrozen = [
            layer.name for layer in where.top.layers[-1].layers if layer.weights and "bn" not in layer.name
        ]
        assert len(unfrozen) == n  # exactly the top n weighted layers are above the cut
    assert cut.cut(backbone, 7) is None and cut.cut(backbone, 0) is None


def test_a_residual_connection_across_the_cut_is_not_cut():
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same")(a)
    added = keras.layers.Add()([a, keras.layers.Conv2D(4, 1)(b)])
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(added))
    assert cut.cut(model, 1) is None  # above the 1x1 convolution, `a` is needed too
    assert cut.cut(model, 2) is not None  # above `a`: everything comes from its output


def test_a_trial_on_the_cut_trains_the_kept_classifier_and_nothing_below(tmp_path, on_disk):
    backbone = pretrained_backbone()
    values = {"strategy": "top", "learning_rate": 1e-2, "unfreeze_layers": 2}
    full = build_trainer(values, {"b": backbone}, 3, FinetuneParams(), Augment())
    where = cut.cut(full.backbone, 2)
    train, val = on_disk(*images(48, seed=1)), on_disk(*images(24, seed=2))
    x, x_val = cut.activations([where], "b", (train, val), PIXELS, tmp_path)[2]
    assert x.shape == (48, where.top.input_shape[-1]) and isinstance(x, np.memmap)  # on disk
    below = [layer.get_weights() for layer in where.bottom.layers if layer.weights]
    top_before = [w.copy() for w in full.backbone.get_layer("conv2_1").get_weights()]
    small = cut.trainer_on_cut(full, where, values, FinetuneParams())
    small.fit(row_batches(x, train.y, 16, 0), steps_per_epoch=3, epochs=2, shuffle=False, verbose=0)
    assert not np.allclose(top_before[0], full.backbone.get_layer("conv2_1").get_weights()[0])
    after = [layer.get_weights() for layer in where.bottom.layers if layer.weights]
    for old, new in zip(below, after, strict=True):
        for a, b in zip(old, new, strict=True):
            np.testing.assert_array_equal(a, b)
    # the kept classifier, on images, is the trained trial on the activations
    on_images = full.classifier.predict(val.examples(PIXELS).astype("float32"), verbose=0)
    np.testing.assert_allclose(small.classifier.predict(np.asarray(x_val), verbose=0), on_images, atol=1e-5)


def test_a_shallower_cut_is_computed_from_the_deeper_one(tmp_path, on_disk, monkeypatch):
    """Two top-n trials (their own copies of the backbone): the deeper cut's activations come
    from the images, the shallower one's from those, and equal what the images would give."""
    backbone = pretrained_backbone()
    copies = [
        build_trainer(
            {"strategy": "top", "learning_rate": 1e-3, "unfreeze_layers": n},
            {"b": backbone},
            3,
            FinetuneParams(),
            Augment(),
        )
        for n in (2, 4)
    ]
    cuts = [cut.cut(copy.backbone, n) for copy, n in zip(copies, (2, 4), strict=True)]
    train, val = on_disk(*images(20, seed=1)), on_disk(*images(10, seed=2))
    passes = []  # which cuts' activations came from a pass over the images
    real = cut.features
    monkeypatch.setattr(
        cut, "features", lambda model, name, *rest: passes.append(name) or real(model, name, *rest)
    )
    found = cut.activations(cuts, "b", (train, val), PIXELS, tmp_path)
    assert sorted(found) == [2, 4] and passes == ["b-cut-4", "b-cut-4"]  # train and val, once each
    for split, rows in zip((train, val), found[2], strict=True):
        direct = cuts[0].bottom.predict(split.examples(PIXELS).astype("float32"), verbose=0)
        np.testing.assert_allclose(rows, direct, rtol=1e-4, atol=1e-4)
    assert len(list((tmp_path / ".transferops" / "features").glob("*.npy"))) == 4  # both kept on disk
