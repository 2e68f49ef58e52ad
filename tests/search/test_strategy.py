"""The strategy search (tasks/search/strategy.py, tasks/search/) on tiny data: real
Keras Tuner head trials on frozen features, real TensorFlow fine-tune rungs on streamed images;
and the two learning rates and the augmentation it trains with."""

from __future__ import annotations

import time

import keras
import numpy as np
import pytest
from conftest import pattern_image

from tasks.core.config import FinetuneParams, SearchParams
from tasks.core.errors import UserError
from tasks.data.datasets import unlabelled
from tasks.modality.pixels import BASELINE_URI as PIXELS_URI
from tasks.modality.pixels import Augment, Images, Pixels
from tasks.models import features, finetune
from tasks.models.backbones import build_backbone
from tasks.models.trainer import build_trainer
from tasks.search import ensemble, heads, records, rungs, scratch, strategy

pytestmark = pytest.mark.slow
PIXELS = Pixels(32)


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


def candidate(name, backbone, train, val, root=None) -> records.SearchBackbone:
    """A backbone as `select` hands it to the search, with its frozen features (cached on disk
    under `root` when given)."""
    return records.SearchBackbone(
        name,
        backbone,
        PIXELS,
        features.features(backbone, name, train, PIXELS, root),
        features.features(backbone, name, val, PIXELS, root),
    )


def test_augmentation_is_off_when_asked_and_never_flips_by_default():
    assert Augment(shift=0, rotate=0, contrast=0).layers(0) is None
    layers = Augment().layers(0).layers
    assert [type(layer).__name__ for layer in layers] == [
        "RandomTranslation",
        "RandomRotation",
        "RandomContrast",
    ]
    flipped = Augment(flip=True, shift=0, rotate=0, contrast=0).layers(0).layers
    assert [type(layer).__name__ for layer in flipped] == ["RandomFlip"]


def test_the_backbone_learns_at_its_own_rate():
    """`top` with a backbone rate of ~0: the head moves, the unfrozen backbone layers do not."""
    backbone = pretrained_backbone()
    values = {"strategy": "top", "learning_rate": 1e-2, "unfreeze_layers": 2, "backbone_rate_factor": 1e-12}
    trainer = build_trainer(values, {"b": backbone}, 3, FinetuneParams(), Augment())
    unfrozen = list(trainer.backbone.trainable_variables)
    assert unfrozen, "top-2 unfreezes backbone layers"
    before = [v.numpy().copy() for v in unfrozen]
    head_before = trainer.classifier.get_layer("head").get_weights()[0].copy()
    x, y = images(48, seed=6)
    trainer.fit(x, y, epochs=2, batch_size=16, verbose=0)  # uint8, as the stream gives them
    assert all(np.allclose(b, v.numpy(), atol=1e-6) for b, v in zip(before, unfrozen, strict=True))
    assert not np.allclose(head_before, trainer.classifier.get_layer("head").get_weights()[0])


def test_the_search_chooses_a_strategy_and_keeps_a_plain_classifier(tmp_path, on_disk):
    backbone = pretrained_backbone()
    train, val = on_disk(*images(90, seed=1)), on_disk(*images(30, seed=2))
    params = SearchParams(
        strategies=["head", "top", "full", "scratch"],
        head_trials=2,
        unfreeze_layers=[2],
        max_epochs=3,
        budget_epochs=4,
        scratch_epochs=4,
        scratch_patience=2,
    )
    found = strategy.search(
        [candidate("pretrained", backbone, train, val)],
        train,
        val,
        3,
        params,
        FinetuneParams(batch_size=16, head_epochs=5),
        Augment(),
        checkpoints=tmp_path / "checkpoints",
        events=tmp_path / "events",
    )
    result = strategy.as_finetune_result(found, tmp_path / "events")
    found = result.search
    by_id = {t["trial_id"]: t for t in found["trials"]}
    heads = [t for t in found["trials"] if t["trial_id"].startswith("head-")]
    assert len(heads) == 2 and {t["hyperparameters"]["learning_rate"] for t in heads} == {1e-4, 1e-2}
    # one bracket: both configurations get a first epoch, then only the leader goes on, and
    # together they stay within the budget
    tuned = [by_id["top-2"], by_id["full"]]
    assert all(t["epochs"] >= 1 for t in tuned) and sum(t["epochs"] for t in tuned) <= 4
    assert 1 <= by_id["scratch"]["epochs"] <= 4
    for trial in found["trials"]:  # each trial's curve, for its MLflow run
        assert len(trial["history"]["val_accuracy"]) == trial["epochs"] >= 1
        assert trial["score"] == max(trial["history"]["val_accuracy"])
    best = max(t["score"] for t in found["trials"])
    assert found["chosen"]["strategy"] in {"head", "top", "full", "scratch"}
    assert found["explanation"].startswith(found["chosen"]["strategy"])
    chosen = next(t for t in found["trials"] if t["hyperparameters"] == found["chosen"])
    assert best - chosen["score"] <= records.noise(best, len(val)) or chosen["score"] == best
    assert f"val_accuracy {chosen['score']:.4f}" in found["explanation"]
    assert "3 head trials" in found["explanation"]  # 2 rates and the logistic regression
    assert found["backbone"] == "pretrained" and 0 <= found["val_accuracy"] <= 1
    # what is kept and served: the classifier alone, no augmentation, no trainer
    names = [type(layer).__name__ for layer in result.model.layers]
    assert not any(name.startswith("Random") for name in names) and "Sequential" not in names
    assert result.model.output_shape == (None, 3)
    assert not (tmp_path / "checkpoints").exists()  # the search's state is removed when done
    assert list((tmp_path / "events" / "search").iterdir())  # TensorBoard files


def test_head_trials_share_one_compiled_head_and_each_starts_fresh(tmp_path, on_disk, monkeypatch):
    """Every head trial of a backbone trains the same compiled model, reset to where it was
    built (weights, dropout's seed state, a fresh Adam): a trial's curve is the one it would
    have had alone."""
    backbone = pretrained_backbone()
    train, val = on_disk(*images(60, seed=1)), on_disk(*images(30, seed=2))
    chosen = candidate("b", backbone, train, val, tmp_path)
    built, build_head = [], heads.build_head
    monkeypatch.setattr(heads, "build_head", lambda *a: built.append(a) or build_head(*a))
    finetune = FinetuneParams(batch_size=16, head_epochs=6, patience=6)
    grid = SearchParams(head_trials=3, learning_rate_range=[1e-3, 1e-1])
    three = heads.head_trials([chosen], (train.y, val.y), 3, grid, finetune, tmp_path / "a", False)
    assert len(built) == 1 and len(three) == 4  # 3 rates, then the logistic regression
    alone = SearchParams(head_trials=1, learning_rate_range=[1e-2, 1e-2])
    (record, weights), _logistic = heads.head_trials(
        [chosen], (train.y, val.y), 3, alone, finetune, tmp_path / "b", False
    )
    middle, middle_weights = three[1]
    assert middle.hyperparameters["learning_rate"] == pytest.approx(1e-2)
    assert middle.history == record.history and middle.epochs == 6
    assert all(np.allclose(a, b) for a, b in zip(middle_weights, weights, strict=True))


def test_a_warm_started_backbones_head_trials_start_from_its_head(tmp_path, on_disk):
    """A warm start (the champion's backbone and head) in the search: its head trials start from
    the champion's head, so at a learning rate too small to move it the trial is that head,
    with its val accuracy; a fresh backbone's trials start from a new head."""
    backbone = pretrained_backbone()
    train, val = on_disk(*images(60, seed=1)), on_disk(*images(30, seed=2))
    fresh = candidate("b", backbone, train, val, tmp_path)
    finetune = FinetuneParams(batch_size=16, head_epochs=6, patience=6)
    grid = SearchParams(head_trials=2, learning_rate_range=[1e-3, 1e-1])
    trained = heads.head_trials([fresh], (train.y, val.y), 3, grid, finetune, tmp_path / "a", False)
    champion_head = trained[0][1]
    warm = records.SearchBackbone(
        "champion", backbone, PIXELS, fresh.train_features, fresh.val_features, champion_head
    )
    still = SearchParams(head_trials=1, learning_rate_range=[1e-12, 1e-12])
    found = heads.head_trials([warm, fresh], (train.y, val.y), 3, still, finetune, tmp_path / "b", False)
    trials = {r.hyperparameters["backbone"]: (r, w) for r, w in found if "solver" not in r.hyperparameters}
    record, weights = trials["champion"]
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(weights, champion_head, strict=True))
    logits = np.asarray(fresh.val_features) @ champion_head[0] + champion_head[1]
    assert record.score == pytest.approx((np.argmax(logits, axis=1) == val.y).mean())
    assert not np.allclose(trials["b"][1][0], champion_head[0])  # a new head, not the champion's


def test_the_raw_pixel_baseline_is_a_servable_logistic_regression(tmp_path, on_disk):
    """`pixels`: a logistic regression on the images at 28 x 28 grey, kept as a plain Keras
    classifier (resize, grey, flatten, softmax) that takes the smallest backbone's input, saves,
    loads and scores on val what its trial scored."""
    train, val = on_disk(*images(60, seed=1)), on_disk(*images(30, seed=2))
    chosen = candidate("b", pretrained_backbone(), train, val)
    params = SearchParams(strategies=["raw"], ensemble_size=1)
    found = strategy.search([chosen], train, val, 3, params, FinetuneParams(batch_size=16), Augment())
    (record,) = found.trials
    assert record.hyperparameters == {"backbone": PIXELS_URI, "strategy": "raw", "solver": "logistic"}
    assert found.backbone == PIXELS_URI and found.encoding == PIXELS and record.score > 0.9  # bars: easy
    found.model.save(tmp_path / "pixels.keras")
    served = keras.models.load_model(tmp_path / "pixels.keras")
    assert served.input_shape == (None, 32, 32, 3)
    predicted = np.argmax(served.predict(val.batches(PIXELS, 16, labels=False), verbose=0), axis=1)
    assert (predicted == val.y).mean() == pytest.approx(record.score) == pytest.approx(found.val_accuracy)


def test_scratch_trains_every_layer_of_a_fresh_copy():
    """`scratch` re-draws the weights and trains every backbone layer (a clone of a frozen
    backbone keeps each layer frozen unless told otherwise); the pretrained one is untouched."""
    backbone = pretrained_backbone()
    backbone.trainable = False
    values = {"strategy": "scratch", "learning_rate": 1e-3}
    trainer = build_trainer(values, {"b": backbone}, 3, FinetuneParams(), Augment())
    weighted = [v for v in trainer.backbone.weights if "moving" not in v.path]
    assert len(trainer.backbone.trainable_variables) == len(weighted) > 0
    kernel = trainer.backbone.get_layer("conv0_0").get_weights()[0]
    assert not np.allclose(kernel, backbone.get_layer("conv0_0").get_weights()[0])
    x, y = images(60, seed=7)
    history = trainer.fit(x, y, epochs=4, batch_size=16, verbose=0)
    assert history.history["accuracy"][-1] > 0.6  # it learns the pattern task (chance: 1/3)


def test_the_search_chooses_among_logmes_best_backbones(on_disk):
    """`select.top_k` > 1 hands the search several backbones: head trials on each one's
    features, fine-tune trials of the best head's backbone; the result names the winner."""
    train, val = on_disk(*images(60, seed=1)), on_disk(*images(30, seed=2))
    backbones = [
        candidate("pretrained", pretrained_backbone(), train, val),
        candidate("fresh", build_backbone(32, 8, seed=3), train, val),
    ]
    params = SearchParams(
        strategies=["head", "top"], head_trials=2, max_epochs=2, unfreeze_layers=[2], ensemble_size=1
    )
    found = strategy.search(backbones, train, val, 3, params, FinetuneParams(batch_size=16), Augment())
    heads = [t for t in found.trials if t.hyperparameters["strategy"] == "head"]
    assert sorted(t.hyperparameters["backbone"] for t in heads) == ["fresh"] * 3 + ["pretrained"] * 3
    tuned = [t for t in found.trials if t.hyperparameters["strategy"] == "top"]
    assert [t.trial_id for t in tuned] == ["top-2"]
    # fine-tuned: the backbone of the head trial kept, the pretrained one (the fresh one's
    # heads are far behind on this task)
    best = {
        name: max(t.score for t in heads if t.hyperparameters["backbone"] == name)
        for name in ("pretrained", "fresh")
    }
    assert best["pretrained"] > best["fresh"] and tuned[0].hyperparameters["backbone"] == "pretrained"
    assert found.backbone == found.best.hyperparameters["backbone"]
    assert f" of {found.backbone} " in found.explanation()
    assert found.best in found.trials


def test_an_ensemble_of_two_backbones_is_distilled_into_one(on_disk):
    """The way back from an ensemble of k backbones (k forward passes an image): one copy of the
    chosen architecture learns the ensemble's soft targets; it is kept, and recorded, when the
    ensemble does not really lead it on val. The architecture's pretrained weights stay as they were."""
    train, val = on_disk(*images(60, seed=1)), on_disk(*images(30, seed=2))
    chosen = candidate("pretrained", pretrained_backbone(), train, val)
    other = candidate("other", build_backbone(32, 4, seed=7), train, val)
    before = [w.copy() for w in chosen.model.get_weights()]
    params = FinetuneParams(batch_size=16, head_epochs=20, head_learning_rate=1e-2, finetune_epochs=1, seed=3)
    members = [finetune.finetune(copy(c.model), train, val, 3, params, PIXELS).model for c in (chosen, other)]
    teacher = ensemble.ensemble(members, [0.5, 0.5])
    teacher_val = teacher.predict(val.batches(PIXELS, 16, labels=False), verbose=0)
    assert (teacher_val.argmax(axis=1) == val.y).mean() >= 0.9
    student, record = strategy.distilled(teacher, teacher_val, chosen, train, val, 3, params)
    assert record["architecture"] == "pretrained" and record["backbone_passes"] == [2, 1]
    # on this learnable task the student matches the ensemble: it is kept
    assert student is not None and record["kept"]
    assert ensemble.backbone_passes(student) == 1 and student.input_shape == teacher.input_shape
    student_val = student.predict(val.batches(PIXELS, 16, labels=False), verbose=0)
    measured = float((student_val.argmax(axis=1) == val.y).mean())
    assert record["val_accuracy"] == pytest.approx(measured) and measured >= 0.9
    for got, want in zip(chosen.model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)
    # with a transfer set of unlabelled images, which the ensemble labels too
    transfer = unlabelled(on_disk(*images(40, seed=4)).root, Images(max_pixels=10**8))
    taught, with_transfer = strategy.distilled(teacher, teacher_val, chosen, train, val, 3, params, transfer)
    assert record["unlabelled_images"] == 0 and with_transfer["unlabelled_images"] == 40
    assert taught is not None and with_transfer["kept"] and with_transfer["val_accuracy"] >= 0.9
    # what the finetune run's summary says of it
    best = records.TrialRecord(
        "head-0", {"strategy": "head", "backbone": "pretrained", "learning_rate": 0.01}, 0.9
    )
    fused = {"members": ["head of pretrained", "head of other"], "val_accuracy": 0.95, "distilled": record}
    words = strategy.SearchResult(student, best, [best], measured, fused, "pretrained", PIXELS).explanation()
    assert "an ensemble of the best 2 scored 0.9500 on val (2 backbone passes an image)" in words
    assert (
        f"distilled into one pretrained, which scored {measured:.4f}: the ensemble does not lead it" in words
    )
    fused["distilled"] = with_transfer
    words = strategy.SearchResult(student, best, [best], measured, fused, "pretrained", PIXELS).explanation()
    assert "distilled into one pretrained with 40 unlabelled images, which scored" in words


def copy(model: keras.Model) -> keras.Model:
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def test_a_spent_deadline_trains_only_the_head_trials(on_disk):
    backbone = pretrained_backbone()
    train, val = on_disk(*images(30, seed=1)), on_disk(*images(15, seed=2))
    spent = time.monotonic() - 1
    params = SearchParams(head_trials=2, max_epochs=3, scratch_epochs=5)
    chosen = [candidate("b", backbone, train, val)]
    found = strategy.search(chosen, train, val, 3, params, FinetuneParams(), Augment(), deadline=spent)
    assert [t.hyperparameters["strategy"] for t in found.trials] == ["head"] * 3  # 2 rates, logistic
    with pytest.raises(UserError, match="no trial before its deadline"):
        strategy.search(
            chosen,
            train,
            val,
            3,
            params.model_copy(update={"strategies": ("scratch",)}),
            FinetuneParams(),
            Augment(),
            deadline=spent,
        )


def test_a_killed_search_resumes_after_its_last_finished_rung(tmp_path, on_disk, monkeypatch):
    """The search's state lives in `checkpoints/search`: after an interrupt, the next search
    with the same checkpoints trains no finished head trial and no finished rung again."""
    backbone = pretrained_backbone()
    train, val = on_disk(*images(45, seed=1)), on_disk(*images(15, seed=2))
    chosen = [candidate("b", backbone, train, val)]
    params = SearchParams(
        strategies=["head", "top", "full"], head_trials=2, unfreeze_layers=[2], max_epochs=3, budget_epochs=4
    )
    finetune = FinetuneParams(batch_size=16, head_epochs=2)
    ended, epochs, save = [], [], rungs._save
    end, curve = heads._HeadTuner.on_trial_end, rungs._Curve.on_epoch_end
    monkeypatch.setattr(heads._HeadTuner, "on_trial_end", lambda self, t: (end(self, t), ended.append(t)))
    monkeypatch.setattr(
        rungs._Curve, "on_epoch_end", lambda self, e, logs=None: (curve(self, e, logs), epochs.append(e))
    )

    def killed_after_the_first_rung(folder, configs):
        save(folder, configs)
        raise KeyboardInterrupt

    monkeypatch.setattr(rungs, "_save", killed_after_the_first_rung)
    with pytest.raises(KeyboardInterrupt):
        strategy.search(chosen, train, val, 3, params, finetune, Augment(), checkpoints=tmp_path / "ck")
    assert (
        (tmp_path / "ck" / "search").is_dir() and len(ended) == 2 and epochs == [0, 0]
    )  # kept for the next run
    ended.clear(), epochs.clear()
    monkeypatch.setattr(rungs, "_save", save)
    found = strategy.search(chosen, train, val, 3, params, finetune, Augment(), checkpoints=tmp_path / "ck")
    assert ended == [] and epochs == [1, 2]  # only the leader, on from its first epoch to its third
    tuned = [t for t in found.trials if t.hyperparameters["strategy"] in ("top", "full")]
    assert sorted((t.epochs, len(t.history["val_accuracy"])) for t in tuned) == [(1, 1), (3, 3)]
    assert not (tmp_path / "ck").exists()


def test_the_logistic_head_is_scikit_learns_model_as_a_softmax_head():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    for classes in (2, 3):
        x, xv = rng.normal(size=(60, 8)).astype("float32"), rng.normal(size=(30, 8)).astype("float32")
        y, yv = np.arange(60) % classes, np.arange(30) % classes
        x[np.arange(60), y] += 2.0  # separable enough to learn
        chosen = records.SearchBackbone("b", None, PIXELS, x, xv)
        record, (kernel, bias) = heads.logistic_head(chosen, (y, yv), classes, seed=0)
        expected = LogisticRegression(max_iter=3000, random_state=0).fit(x.astype("float64"), y)
        logits = xv @ kernel + bias
        softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
        softmax /= softmax.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(softmax, expected.predict_proba(xv), atol=1e-4)
        assert record.score == (expected.predict(xv) == yv).mean() and record.epochs == 1
        assert set(record.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}  # as an epoch


def test_the_simplest_trial_the_best_does_not_really_lead_is_chosen():
    def trial(name, strategy, score, **extra):
        return records.TrialRecord(name, {"strategy": strategy, **extra}, score)

    tried = [
        trial("scratch", "scratch", 0.9875),
        trial("top-4", "top", 0.9812, unfreeze_layers=4),
        trial("head-1", "head", 0.9750, learning_rate=1e-3),
        trial("logistic-b", "head", 0.9719, solver="logistic"),
        trial("pixels", "raw", 0.9625, solver="logistic"),
    ]
    # without per-image results: 160 val images, two standard errors of 0.9875 are 0.0177
    assert records.choose(tried, 160).trial_id == "logistic-b"  # 0.0156 behind; pixels 0.0250
    assert records.choose(tried, 10_000).trial_id == "scratch"  # 0.0022: only scratch is that close
    # per image (McNemar's pairing): scratch wrong on 10 of 160, the logistic head on 15
    tried = [trial("scratch", "scratch", 0.9375), trial("logistic-b", "head", 0.90625, solver="logistic")]
    wrong = {"scratch": list(range(10))}
    assert records.choose(tried, 160).trial_id == "logistic-b"  # unpaired: 0.0313 <= 0.0383
    # on the same 10 images and 5 more: scratch is right on 5 more and never worse (5 > 2 sqrt 5)
    wrong["logistic-b"] = list(range(15))
    correct = {k: ~np.isin(np.arange(160), v) for k, v in wrong.items()}
    assert records.leads(correct["scratch"], correct["logistic-b"])
    assert records.choose(tried, 160, correct).trial_id == "scratch"
    # on different images (10 against 5): the same gap is within the noise (5 <= 2 sqrt 15)
    wrong["logistic-b"] = [*range(5), *range(100, 110)]
    correct = {k: ~np.isin(np.arange(160), v) for k, v in wrong.items()}
    assert not records.leads(correct["scratch"], correct["logistic-b"])
    assert records.choose(tried, 160, correct).trial_id == "logistic-b"
    # 4 better and never worse is not yet a lead at two standard errors (4 <= 2 sqrt 4)
    wrong["logistic-b"] = list(range(14))
    correct = {k: ~np.isin(np.arange(160), v) for k, v in wrong.items()}
    assert not records.leads(correct["scratch"], correct["logistic-b"])


def test_scratch_patience_counts_updates_as_well_as_epochs():
    params = SearchParams()  # 20 epochs, or 1000 steps, never under 5 epochs
    assert scratch.scratch_patience(params, 50, 32) == 20  # 2 steps an epoch: 40 updates
    assert scratch.scratch_patience(params, 711, 32) == 20  # 23 steps an epoch: 460 updates
    assert scratch.scratch_patience(params, 6400, 32) == 5  # 200 steps an epoch
    assert scratch.scratch_patience(params, 3200, 32) == 10
    assert scratch.scratch_patience(params, 50_000, 32) == 5
    assert scratch.scratch_patience(SearchParams(scratch_patience_steps=None), 50_000, 32) == 20
