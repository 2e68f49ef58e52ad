"""Ensembles (tasks/search/ensemble.py): the weighted mean of members' probabilities as one plain Keras
model that saves, loads (safe mode) and serves like any classifier; kept only when it wins on
validation."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tasks.models.backbones import backbone_of, build_backbone, build_classifier, single
from tasks.search import ensemble


def classifier(seed: int, width: int = 4) -> keras.Model:
    keras.utils.set_random_seed(seed)
    backbone = build_backbone(16, width, seed=seed)
    head = keras.layers.Dense(3, activation="softmax", name="head")
    return build_classifier(backbone, head, 0.0, seed)


def test_an_ensemble_is_the_weighted_mean_and_round_trips_as_a_keras_file(tmp_path):
    members = [classifier(1, width=2), classifier(2)]
    x = np.random.default_rng(0).integers(0, 255, (8, 16, 16, 3)).astype("float32")
    fused = ensemble.ensemble(members, [0.25, 0.75])
    assert ensemble.backbone_passes(fused) == 2 and ensemble.backbone_passes(members[0]) == 1
    expected = 0.25 * members[0].predict(x, verbose=0) + 0.75 * members[1].predict(x, verbose=0)
    np.testing.assert_allclose(fused.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    fused.save(tmp_path / "ensemble.keras")
    loaded = keras.models.load_model(tmp_path / "ensemble.keras")  # safe mode: built-in layers only
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    # what drift and warm starts use: the best member's backbone and head (widths differ)
    assert backbone_of(loaded).output_shape == members[0].layers[1].output_shape == (None, 8)
    for got, want in zip(
        single(loaded).get_layer("head").get_weights(),
        members[0].get_layer("head").get_weights(),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)


def test_members_that_share_a_backbone_save_and_load(tmp_path):
    """Head trials of one backbone share the backbone object; their ensemble still loads
    (safe mode, as the served model does) and gives the weighted mean."""
    backbone = build_backbone(16, 4, seed=3)
    heads = [keras.layers.Dense(3, activation="softmax", name="head") for _ in range(2)]
    members = [build_classifier(backbone, head, 0.0, i) for i, head in enumerate(heads)]
    x = np.random.default_rng(1).integers(0, 255, (8, 16, 16, 3)).astype("float32")
    expected = 0.5 * members[0].predict(x, verbose=0) + 0.5 * members[1].predict(x, verbose=0)
    fused = ensemble.ensemble(members, [0.5, 0.5])
    # one forward pass of the backbone for both heads: it is in the ensemble once
    assert [layer.name for layer in fused.layers if isinstance(layer, keras.Model)] == [backbone.name]
    assert ensemble.backbone_passes(fused) == 1  # nothing to distil: it costs one backbone
    fused.save(tmp_path / "shared.keras")
    loaded = keras.models.load_model(tmp_path / "shared.keras", compile=False, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)


def test_a_fine_tuned_copy_with_its_originals_name_and_other_shapes_still_load(tmp_path):
    """A fine-tune trial's backbone is a clone with the original's name, beside head trials of
    the original; a member that is not backbone + head is nested whole, copied when it shares
    layers with an earlier one."""
    original = build_backbone(16, 4, seed=4)
    tuned = keras.models.clone_model(original)
    tuned.set_weights([w * 1.1 for w in original.get_weights()])
    members = [
        build_classifier(b, keras.layers.Dense(3, activation="softmax", name="head"), 0.0, i)
        for i, b in enumerate((original, tuned, original))
    ]
    inputs = keras.Input((16, 16, 3))
    odd = keras.Model(inputs, keras.layers.Softmax()(keras.layers.Dense(3)(original(inputs))))
    x = np.random.default_rng(2).integers(0, 255, (8, 16, 16, 3)).astype("float32")
    for group, weights in ((members, [0.5, 0.3, 0.2]), ([members[0], odd], [0.5, 0.5])):
        expected = sum(w * m.predict(x, verbose=0) for w, m in zip(weights, group, strict=True))
        ensemble.ensemble(group, weights).save(tmp_path / "mixed.keras")
        loaded = keras.models.load_model(tmp_path / "mixed.keras", compile=False, safe_mode=True)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)


class Fixed(keras.layers.Layer):
    """Returns the same probabilities for every image (a member with known answers)."""

    def __init__(self, rows: np.ndarray) -> None:
        super().__init__()
        self.rows = rows

    def call(self, inputs):
        return keras.ops.convert_to_tensor(self.rows)


def member(rows: list[list[float]]) -> keras.Model:
    inputs = keras.Input((2,))
    return keras.Model(inputs, Fixed(np.asarray(rows, dtype="float32"))(inputs))


def test_the_ensemble_is_kept_only_when_it_really_leads_the_chosen_member_on_validation():
    y = np.array([0, 1] * 10)
    x = np.zeros((20, 2), dtype="float32")
    right, unsure_wrong = [[0.9, 0.1], [0.1, 0.9]], [[0.4, 0.6], [0.6, 0.4]]  # two rows: labels 0, 1
    # each member gets 14 of 20 right and 6 others wrong (unsure of them); averaged, all 20
    a = member(right * 7 + unsure_wrong * 3)
    b = member(unsure_wrong * 3 + right * 7)
    val = [np.asarray(m.predict(x, verbose=0)) for m in (a, b)]
    model, accuracy, info = ensemble.fuse([a, b], val, y, weighted=False)
    assert accuracy == 1.0 and info["member_val_accuracy"] == [0.7, 0.7]  # 6 better: 6 > 2 sqrt 6
    assert model.name == "ensemble" and info["weights"] == [0.5, 0.5]
    # right on all 20 as well, but 4 better than the chosen member is noise (4 <= 2 sqrt 4)
    c = member(right * 8 + unsure_wrong * 2)
    val = [np.asarray(m.predict(x, verbose=0)) for m in (c, b)]
    assert ((val[0] + val[1]).argmax(axis=1) == y).all()
    model, accuracy, info = ensemble.fuse([c, b], val, y, weighted=False)
    assert model is c and accuracy == 0.8 and info is None
    # a member as good as the ensemble: the chosen member is kept (simpler, as accurate)
    perfect = member(right * 10)
    val = [np.asarray(m.predict(x, verbose=0)) for m in (perfect, a)]
    model, accuracy, info = ensemble.fuse([perfect, a], val, y, weighted=True)
    assert model is perfect and accuracy == 1.0 and info is None


def test_the_raw_baseline_fusion_is_kept_unless_the_chosen_member_really_leads_it():
    """`search.fuse_raw`: the burden turned round. An average the chosen member does not really
    lead is kept, even when it does not really lead the chosen member either."""
    y = np.array([0, 1] * 10)
    x = np.zeros((20, 2), dtype="float32")
    right, unsure_wrong = [[0.9, 0.1], [0.1, 0.9]], [[0.4, 0.6], [0.6, 0.4]]
    c = member(right * 8 + unsure_wrong * 2)  # 16 of 20
    b = member(unsure_wrong * 3 + right * 7)  # 14 of 20, wrong on others
    val = [np.asarray(m.predict(x, verbose=0)) for m in (c, b)]
    model, accuracy, info = ensemble.fuse([c, b], val, y, weighted=True, unless_led=True)
    assert model.name == "ensemble" and accuracy == 1.0 and info["rule"] == "fuse_raw"
    assert info["weights"] == pytest.approx([0.8 / 1.5, 0.7 / 1.5])  # by val accuracy
    # a member that is sure where the chosen is right and drags the average wrong on 6 of them
    sure_wrong = [[0.0, 1.0], [1.0, 0.0]]
    d = member(sure_wrong * 3 + unsure_wrong * 7)
    val = [np.asarray(m.predict(x, verbose=0)) for m in (c, d)]
    assert ((val[0] + val[1]).argmax(axis=1) == y).sum() == 10  # c right on 16: 6 better > 2 sqrt 6
    model, accuracy, info = ensemble.fuse([c, d], val, y, weighted=False, unless_led=True)
    assert model is c and accuracy == 0.8 and info is None


def test_a_student_replaces_its_ensemble_unless_the_ensemble_really_leads_it():
    y = np.array([0, 1] * 10)
    right = np.eye(2)[y]
    wrong_on = lambda k: np.concatenate([1 - right[:k], right[k:]])  # noqa: E731 (wrong on the first k)
    # the ensemble right on all 20: a student wrong on 6 is really behind (6 > 2 sqrt 6), on 4 it is not
    assert not ensemble.student_kept(right, wrong_on(6), y)
    assert ensemble.student_kept(right, wrong_on(4), y)
    assert ensemble.student_kept(wrong_on(3), right, y)  # a student better than its teacher
