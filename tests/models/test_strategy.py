"""The strategy search (tasks/models/strategy.py) on tiny data: real Keras Tuner Hyperband, real
TensorFlow training; and the two learning rates and the augmentation it trains with."""

from __future__ import annotations

import time

import keras
import numpy as np
import pytest
from conftest import pattern_image

from tasks.core.config import AugmentParams, FinetuneParams, SearchParams
from tasks.core.errors import UserError
from tasks.models import strategy
from tasks.models.backbones import build_backbone
from tasks.models.trainer import augmentation, build_trainer

pytestmark = pytest.mark.slow


def images(n: int, seed: int, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    return np.stack([pattern_image(int(k), rng, 32) for k in labels]), labels


def pretrained_backbone() -> keras.Model:
    """A backbone that has learnt the pattern task a little (what `select` would hand over)."""
    backbone = build_backbone(32, 8)
    x, y = images(120, seed=5)
    model = keras.Sequential([backbone, keras.layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x.astype("float32"), y, epochs=3, batch_size=16, verbose=0)
    return backbone


def test_augmentation_is_off_when_asked_and_never_flips_by_default():
    assert augmentation(AugmentParams(shift=0, rotate=0, contrast=0), 0) is None
    layers = augmentation(AugmentParams(), 0).layers
    assert [type(layer).__name__ for layer in layers] == [
        "RandomTranslation",
        "RandomRotation",
        "RandomContrast",
    ]
    flipped = augmentation(AugmentParams(flip=True, shift=0, rotate=0, contrast=0), 0).layers
    assert [type(layer).__name__ for layer in flipped] == ["RandomFlip"]


def test_the_backbone_learns_at_its_own_rate():
    """`top` with a backbone rate of ~0: the head moves, the unfrozen backbone layers do not."""
    backbone = pretrained_backbone()
    hp = strategy.kt.HyperParameters()
    hp.Fixed("strategy", "top")
    hp.Fixed("learning_rate", 1e-2)
    with hp.conditional_scope("strategy", ["top"]):
        hp.Fixed("unfreeze_layers", 2)
    with hp.conditional_scope("strategy", ["top", "full"]):
        hp.Fixed("backbone_rate_factor", 1e-12)
    search = SearchParams(
        strategies=["top"], learning_rate_range=[1e-2, 1e-2], backbone_rate_range=[1e-12, 1e-12]
    )
    trainer = build_trainer(hp, {"b": backbone}, 3, search, FinetuneParams(), AugmentParams())
    unfrozen = list(trainer.backbone.trainable_variables)
    assert unfrozen, "top-2 unfreezes backbone layers"
    before = [v.numpy().copy() for v in unfrozen]
    head_before = trainer.classifier.get_layer("head").get_weights()[0].copy()
    x, y = images(48, seed=6)
    trainer.fit(x.astype("float32"), y, epochs=2, batch_size=16, verbose=0)
    assert all(np.allclose(b, v.numpy(), atol=1e-6) for b, v in zip(before, unfrozen, strict=True))
    assert not np.allclose(head_before, trainer.classifier.get_layer("head").get_weights()[0])


def test_hyperband_chooses_a_strategy_and_keeps_a_plain_classifier(tmp_path):
    backbone = pretrained_backbone()
    train, val = images(90, seed=1), images(30, seed=2)
    params = SearchParams(
        strategies=["head", "top", "scratch"],
        max_epochs=3,
        unfreeze_layers=[2],
        scratch_epochs=4,
        scratch_patience=2,
    )
    found = strategy.search(
        {"pretrained": backbone},
        train,
        val,
        3,
        params,
        FinetuneParams(batch_size=16, head_epochs=5),
        AugmentParams(),
        checkpoints=tmp_path / "checkpoints",
        events=tmp_path / "events",
    )
    result = strategy.as_finetune_result(found, tmp_path / "events")
    found = result.search
    tried = {t["hyperparameters"]["strategy"] for t in found["trials"]}
    assert tried == {"head", "top", "scratch"} and len(found["trials"]) >= 3
    hyperband = [t for t in found["trials"] if t["trial_id"] != "scratch"]
    assert {t["hyperparameters"]["strategy"] for t in hyperband} == {"head", "top"}
    (scratch,) = [t for t in found["trials"] if t["trial_id"] == "scratch"]  # outside Hyperband
    assert 1 <= scratch["epochs"] <= 4 and scratch["score"] == max(scratch["history"]["val_accuracy"])
    assert found["backbone"] == "pretrained"
    assert found["chosen"]["strategy"] in tried
    best = max(t["score"] for t in found["trials"])
    assert found["explanation"].startswith(f"{result.search['chosen']['strategy']}")
    assert f"val_accuracy {best:.4f}" in found["explanation"]
    assert 0 <= found["val_accuracy"] <= 1
    for trial in found["trials"]:  # each trial's curve, for its MLflow run
        assert len(trial["history"]["val_accuracy"]) == trial["epochs"] >= 1
    # a promoted trial's curve continues its parent's: Hyperband's last rung has every epoch
    assert max(t["epochs"] for t in hyperband) == 3
    # what is kept and served: the classifier alone, no augmentation, no trainer
    names = [type(layer).__name__ for layer in result.model.layers]
    assert not any(name.startswith("Random") for name in names) and "Sequential" not in names
    assert result.model.output_shape == (None, 3)
    assert not (tmp_path / "checkpoints").exists()  # the tuner's state is removed when done
    assert list((tmp_path / "events" / "search").iterdir())  # TensorBoard files per trial


def test_scratch_trains_every_layer_of_a_fresh_copy():
    """`scratch` re-draws the weights and trains every backbone layer (a clone of a frozen
    backbone keeps each layer frozen unless told otherwise); the pretrained one is untouched."""
    backbone = pretrained_backbone()
    backbone.trainable = False
    hp = strategy.kt.HyperParameters()
    hp.Fixed("strategy", "scratch")
    hp.Fixed("learning_rate", 1e-3)
    trainer = build_trainer(hp, {"b": backbone}, 3, SearchParams(), FinetuneParams(), AugmentParams())
    weighted = [v for v in trainer.backbone.weights if "moving" not in v.path]
    assert len(trainer.backbone.trainable_variables) == len(weighted) > 0
    kernel = trainer.backbone.get_layer("conv0_0").get_weights()[0]
    assert not np.allclose(kernel, backbone.get_layer("conv0_0").get_weights()[0])
    x, y = images(60, seed=7)
    history = trainer.fit(x.astype("float32"), y, epochs=4, batch_size=16, verbose=0)
    assert history.history["accuracy"][-1] > 0.6  # it learns the pattern task (chance: 1/3)


def test_the_search_chooses_among_logmes_best_backbones():
    """`select.top_k` > 1 hands the search several backbones: the backbone is one more
    hyperparameter of every Hyperband trial, and the result names the one that won."""
    backbones = {"pretrained": pretrained_backbone(), "fresh": build_backbone(32, 8, seed=3)}
    train, val = images(60, seed=1), images(30, seed=2)
    params = SearchParams(strategies=["head", "top"], max_epochs=3, unfreeze_layers=[2], ensemble_size=1)
    found = strategy.search(backbones, train, val, 3, params, FinetuneParams(batch_size=16), AugmentParams())
    assert found.trials and all(t.hyperparameters["backbone"] in backbones for t in found.trials)
    assert found.backbone == found.best.hyperparameters["backbone"]
    assert f" of {found.backbone} " in found.explanation()
    assert found.best.score == max(t.score for t in found.trials)


def test_a_spent_deadline_starts_no_trial_and_stops_scratch_after_one_epoch():
    backbone = pretrained_backbone()
    train, val = images(30, seed=1), images(15, seed=2)
    spent = time.monotonic() - 1
    params = SearchParams(strategies=["head", "scratch"], max_epochs=3, scratch_epochs=5)
    found = strategy.search(
        {"b": backbone}, train, val, 3, params, FinetuneParams(), AugmentParams(), deadline=spent
    )
    assert [(t.trial_id, t.epochs) for t in found.trials] == [("scratch", 1)]
    with pytest.raises(UserError, match="no trial before its deadline"):
        strategy.search(
            {"b": backbone},
            train,
            val,
            3,
            params.model_copy(update={"strategies": ("head",)}),
            FinetuneParams(),
            AugmentParams(),
            deadline=spent,
        )


def test_a_killed_search_resumes_after_its_last_finished_trial(tmp_path, monkeypatch):
    """The tuner's state lives in `checkpoints/search`: after an interrupt, the next search
    with the same checkpoints trains only the trials that had not finished."""
    backbone = pretrained_backbone()
    train, val = images(45, seed=1), images(15, seed=2)
    params = SearchParams(strategies=["head", "top"], max_epochs=3, unfreeze_layers=[2], ensemble_size=1)
    finetune = FinetuneParams(batch_size=16, head_epochs=2)
    finished, end = [], strategy._Tuner.on_trial_end

    def killed_after_two(self, trial):
        end(self, trial)
        finished.append(trial.trial_id)
        if len(finished) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(strategy._Tuner, "on_trial_end", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        strategy.search(
            {"b": backbone}, train, val, 3, params, finetune, AugmentParams(), checkpoints=tmp_path
        )
    assert (tmp_path / "search").is_dir()  # kept for the next run
    monkeypatch.setattr(
        strategy._Tuner, "on_trial_end", lambda self, t: (end(self, t), finished.append(t.trial_id))
    )
    found = strategy.search(
        {"b": backbone}, train, val, 3, params, finetune, AugmentParams(), checkpoints=tmp_path
    )
    assert len(finished) == len(set(finished)) > 2  # no finished trial was trained again
    assert sorted(t.trial_id for t in found.trials) == sorted(finished)
    assert not (tmp_path / "search").exists()
