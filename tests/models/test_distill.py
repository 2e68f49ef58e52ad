"""Distillation: the loss is Hinton's (as Keras' LogitsDistillation computes it) mixed with the
labels, the teacher's targets come from a real forward pass over a streamed split, and a head
trained on them answers like the teacher, closer than a head trained on the labels alone."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tasks.core.config import FinetuneParams
from tasks.data.datasets import UNLABELLED
from tasks.modality.pixels import Pixels
from tasks.models import distill
from tasks.models.finetune import train_head


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_the_loss_mixes_labels_and_the_tempered_teacher():
    teacher = softmax(np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.2]]))
    student = softmax(np.array([[1.0, 1.0, 0.0], [-0.5, 2.0, 0.5]])).astype("float32")
    labels = np.array([0, 2])
    packed = np.concatenate([labels[:, None], np.log(teacher)], axis=1).astype("float32")
    t, w = 2.0, 0.3
    hard = -np.mean(np.log(student[[0, 1], labels]))
    pt, ps = softmax(np.log(teacher) / t), softmax(np.log(student) / t)
    kl = np.mean(np.sum(pt * np.log(pt / ps), axis=1))
    expected = (1 - w) * hard + w * t**2 * kl
    got = float(distill.loss(t, w)(keras.ops.convert_to_tensor(packed), keras.ops.convert_to_tensor(student)))
    assert got == pytest.approx(expected, rel=1e-4)


def test_an_unlabelled_row_learns_the_teacher_alone():
    """A transfer-set image (no label) adds only the soft term: the hard term averages over the
    labelled rows; its accuracy is judged against the teacher's top class."""
    teacher = softmax(np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.2]]))
    student = softmax(np.array([[1.2, 1.0, 0.0], [-0.5, 2.0, 0.5]])).astype("float32")
    packed = np.concatenate([[[0], [UNLABELLED]], np.log(teacher)], axis=1).astype("float32")
    t, w = 2.0, 0.3
    pt, ps = softmax(np.log(teacher) / t), softmax(np.log(student) / t)
    kl = np.mean(np.sum(pt * np.log(pt / ps), axis=1))
    expected = (1 - w) * -np.log(student[0, 0]) + w * t**2 * kl
    target, predicted = keras.ops.convert_to_tensor(packed), keras.ops.convert_to_tensor(student)
    assert float(distill.loss(t, w)(target, predicted)) == pytest.approx(expected, rel=1e-4)
    metric = distill.accuracy()
    metric.update_state(target, predicted)
    assert float(metric.result()) == 1.0  # row 1: the teacher's class 1, which the student answers


def test_targets_are_the_labels_and_the_teachers_log_probabilities(on_disk):
    rng = np.random.default_rng(0)
    split = on_disk(rng.integers(0, 255, (20, 8, 8, 3), dtype=np.uint8), rng.integers(0, 3, 20))
    inputs = keras.Input((8, 8, 3))
    teacher = keras.Model(
        inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs))
    )
    packed = distill.targets(teacher, split, Pixels(8), "teacher")
    assert packed.shape == (20, 4)
    assert np.array_equal(packed[:, 0], split.y)
    expected = teacher.predict(split.examples(Pixels(8)).astype("float32"), verbose=0)
    assert np.allclose(np.exp(packed[:, 1:]), expected, atol=1e-5)


def test_a_distilled_head_answers_like_its_teacher():
    """A soft teacher on features a linear head can represent exactly: trained on its soft
    targets, the head's probabilities come out far closer to the teacher's (KL on unseen
    features) than a head trained on the teacher's top-1 labels, at no cost in accuracy."""
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(8, 4)) * 0.6
    x = rng.normal(size=(1200, 8)).astype("float32")
    p = softmax(x @ weights)
    y = p.argmax(axis=1)
    packed = np.concatenate([y[:, None], np.log(p)], axis=1).astype("float32")
    train, val, test = slice(0, 800), slice(800, 1000), slice(1000, 1200)
    params = FinetuneParams(head_epochs=60, head_learning_rate=0.02, patience=60, dropout=0.0, batch_size=64)
    distilled = FinetuneParams(
        **{**params.model_dump(), "distill_temperature": 2.0, "distill_soft_weight": 0.9}
    )

    def fitted(settings: FinetuneParams, teacher=None) -> np.ndarray:
        keras.utils.set_random_seed(0)
        dense = train_head((x[train], y[train]), (x[val], y[val]), 4, settings, teacher=teacher)
        return np.asarray(dense(x[test]))

    def kl(q: np.ndarray) -> float:
        return float(np.mean(np.sum(p[test] * np.log(p[test] / np.clip(q, 1e-7, 1)), axis=1)))

    hard, soft = fitted(params), fitted(distilled, (packed[train], packed[val]))
    assert kl(soft) < 0.1 * kl(hard)
    assert (soft.argmax(1) == y[test]).mean() >= (hard.argmax(1) == y[test]).mean() - 0.02


def test_a_distillation_is_the_fixed_recipe_on_the_student_alone():
    from flows.cli import distill_params
    from tasks.core.config import ConfigError, Params, parse_params

    told = Params.model_validate({"finetune": {"finetune_epochs": 2}})
    params = distill_params(told, "clf/3", "lite0:imagenet")
    assert params.finetune.distill_from == "clf/3" and params.finetune.finetune_epochs == 2
    assert [c.uri for c in params.images.candidates] == ["lite0:imagenet"] and not params.search.enabled
    with pytest.raises(ConfigError, match="a candidate is registry:"):
        distill_params(Params(), "clf/3", "resnet")
    with pytest.raises(ConfigError, match=r"needs search\.enabled: false and no multi_worker"):
        parse_params({"finetune": {"distill_from": "clf/3"}}, "params.yaml")


def test_phase_two_learns_the_soft_targets_too(on_disk):
    """With a teacher and phase 2 on, the fine-tuned classifier is the one that minimised the
    distillation loss on val (its best val_loss is that loss of its own predictions)."""
    from conftest import pattern_image

    from tasks.models.backbones import build_backbone
    from tasks.models.finetune import finetune

    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    images = np.stack([pattern_image(int(k), rng, 16) for k in y])
    train, val = on_disk(images[:60], y[:60]), on_disk(images[60:], y[60:])
    inputs = keras.Input((16, 16, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    teacher = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(pooled))
    pixels = Pixels(16)
    packed = tuple(distill.targets(teacher, s, pixels, "teacher") for s in (train, val))
    params = FinetuneParams(
        head_epochs=3,
        finetune_epochs=3,
        unfreeze_layers=2,
        batch_size=32,
        patience=3,
        distill_temperature=2.0,
        distill_soft_weight=0.7,
    )
    keras.utils.set_random_seed(0)
    result = finetune(build_backbone(16, width=4), train, val, 3, params, pixels, teacher=packed)
    curve = result.history["finetune"]
    assert set(curve) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    predicted = result.model.predict(val.examples(pixels).astype("float32"), verbose=0)
    own = float(
        distill.loss(2.0, 0.7)(keras.ops.convert_to_tensor(packed[1]), keras.ops.convert_to_tensor(predicted))
    )
    assert own == pytest.approx(min(curve["val_loss"]), rel=1e-3)
