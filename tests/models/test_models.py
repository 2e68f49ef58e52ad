"""Backbones, fine-tuning and evaluation on tiny images (real Keras; tiny PNGs in tmp_path,
streamed as the pipeline streams them)."""

import keras
import numpy as np
import pytest
from conftest import pattern_image

from tasks.core.config import Candidate, FinetuneParams
from tasks.evaluation import evaluate
from tasks.modality.pixels import Images, Pixels, input_size
from tasks.modality.tokens import Texts
from tasks.models.backbones import (
    backbone_of,
    build_backbone,
    build_classifier,
    build_head,
    keras_application,
)
from tasks.models.finetune import finetune, train_from_scratch, unfreeze_top
from tasks.selection.families import load_candidate

PIXELS = Pixels(32)


def tiny_arrays(n_per_class: int, seed: int, classes: int = 3, size: int = 32):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    x = np.stack([pattern_image(int(k), rng, size) for k in y])
    return x, y


@pytest.fixture
def tiny_split(on_disk):
    """`tiny_split(n_per_class, seed)`: a Split of learnable 32-px images on disk."""
    return lambda n_per_class, seed, classes=3: on_disk(*tiny_arrays(n_per_class, seed, classes))


def test_backbone_and_classifier_shapes():
    backbone = build_backbone(32, width=4)
    assert backbone.output_shape == (None, 16)
    _, dense = build_head(16, 5, 0.1)
    classifier = build_classifier(backbone, dense, 0.1)
    assert classifier.output_shape == (None, 5)
    assert backbone_of(classifier) is backbone
    probs = classifier.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_unfreeze_top_skips_batchnorm():
    backbone = build_backbone(32, width=4)
    names = unfreeze_top(backbone, 2)
    assert names == ["conv2_0", "conv2_1"]
    trainable = {layer.name for layer in backbone.layers if layer.trainable and layer.weights}
    assert trainable == {"conv2_0", "conv2_1"}


def test_finetune_learns_and_keeps_batchnorm_statistics(tiny_split):
    backbone = build_backbone(32, width=8)
    train_from_scratch(
        backbone,
        tiny_split(20, 5),
        tiny_split(5, 6),
        PIXELS,
        3,
        epochs=6,
        learning_rate=3e-3,
        batch_size=8,
        patience=6,
    )  # "pretraining"
    bn = backbone.get_layer("bn2_1")
    moving_mean = np.array(bn.moving_mean)
    params = FinetuneParams(
        head_epochs=60,
        finetune_epochs=3,
        batch_size=16,
        patience=60,
        head_learning_rate=0.01,
        unfreeze_layers=2,
    )
    result = finetune(backbone, tiny_split(20, 0), tiny_split(6, 1), 3, params, PIXELS)
    x_test, y_test = tiny_arrays(10, 2)
    accuracy = evaluate.metrics(y_test, result.model.predict(x_test.astype("float32"), verbose=0))
    assert accuracy["accuracy"] > 0.7  # chance is 1/3
    assert set(result.history) == {"head", "finetune"}
    assert result.unfrozen == ["conv2_0", "conv2_1"]
    # BatchNorm stayed in inference mode through phase 2: its statistics did not move.
    np.testing.assert_array_equal(np.array(bn.moving_mean), moving_mean)


def test_keras_application_builds_offline_without_weights():
    model = keras_application("MobileNetV3Small", 32, "none")
    assert model.output_shape == (None, 576)


def test_unsupported_candidates_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="in-model preprocessing"):
        keras_application("ResNet50", 32, "none")
    with pytest.raises(FileNotFoundError, match="weights file"):
        keras_application("MobileNetV3Small", 32, str(tmp_path / "missing.h5"))
    with pytest.raises(ValueError, match="must start with"):
        load_candidate(Candidate.model_construct(uri="hub:foo"))  # params refuse it earlier


def test_file_candidate_loads_and_checks_its_shape(tmp_path):
    path = tmp_path / "b.keras"
    build_backbone(32, width=4).save(path)
    model = load_candidate(Candidate(uri=f"file:{path}"))
    assert model.output_shape == (None, 16) and input_size(model) == 32  # it takes its own size
    # a file may hold a backbone of any modality: the run's modality checks what it takes
    keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten()]).save(tmp_path / "grey.keras")
    grey = load_candidate(Candidate(uri=f"file:{tmp_path / 'grey.keras'}"))
    with pytest.raises(ValueError, match="expected square RGB"):
        Images().encoding_for(grey, "file:grey.keras")
    with pytest.raises(ValueError, match="expected token ids"):
        Texts().encoding_for(grey, "file:grey.keras")


def test_metrics_report_and_confusion_png(tmp_path):
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.1, 0.9]])
    scores = evaluate.metrics(y, probs)
    assert scores["accuracy"] == 0.75
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    report = evaluate.per_class_report(y, probs, ["a", "b"])
    assert report["a"]["recall"] == 0.5 and report["b"]["recall"] == 1.0
    matrix = evaluate.confusion(y, probs, 2)
    assert matrix.tolist() == [[1, 1], [0, 2]]
    png = evaluate.plot_confusion(matrix, ["a", "b"], tmp_path / "cm.png", "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_line_per_epoch_on_a_terminal_and_none_otherwise(monkeypatch, capsys, tiny_split):
    params = FinetuneParams(head_epochs=2, finetune_epochs=1, batch_size=16, unfreeze_layers=1)
    monkeypatch.setenv("TRANSFEROPS_PROGRESS", "1")
    finetune(build_backbone(32, width=4), tiny_split(4, 0), tiny_split(2, 1), 3, params, PIXELS)
    lines = capsys.readouterr().err.splitlines()
    epochs = [line for line in lines if " epoch " in line]
    assert [line.split("  ")[0] for line in epochs] == [
        "head epoch 1/2",
        "head epoch 2/2",
        "finetune epoch 1/1",
    ]
    assert "val_loss" in epochs[0] and epochs[0].endswith("s")
    bars = {line.split(":")[0] for line in lines if "img" in line}  # tqdm: "train features: 100%|..."
    assert {"train features", "val features"} <= bars
    assert any(line.startswith("finetune training, pass 1:") and "batch" in line for line in lines)
    monkeypatch.setenv("TRANSFEROPS_PROGRESS", "0")
    finetune(build_backbone(32, width=4), tiny_split(4, 0), tiny_split(2, 1), 3, params, PIXELS)
    assert capsys.readouterr().err == ""


def test_initial_weights_do_not_depend_on_the_global_random_state():
    """Prefect's and MLflow's threads draw from Python's `random` too: a seed=None layer would
    get other weights whenever they happen to draw between two builds."""
    import random

    def build_all():
        _, dense = build_head(16, 3, 0.2, seed=5)
        return [
            *build_backbone(16, width=4, seed=5).get_weights(),
            *dense.get_weights(),
            *keras_application("MobileNetV3Small", 32, "none", seed=5).get_weights(),
        ]

    random.seed(1)
    first = build_all()
    random.seed(2)
    random.random()
    second = build_all()
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_a_killed_training_resumes_from_its_last_epoch(tmp_path, monkeypatch, tiny_split):
    import tasks.models.finetune as ft
    from tasks.models.epochs import EpochLines

    class Killed(Exception):
        pass

    class KillAfterTwoEpochs(EpochLines):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:  # epochs 0 and 1 are checkpointed; this one never finishes
                raise Killed

    params = FinetuneParams(head_epochs=6, finetune_epochs=0, patience=10, batch_size=8)
    train, val = tiny_split(4, 0), tiny_split(2, 1)
    monkeypatch.setattr(ft, "EpochLines", KillAfterTwoEpochs)
    with pytest.raises(Killed):
        finetune(
            build_backbone(32, width=4, seed=1), train, val, 3, params, PIXELS, checkpoints=tmp_path / "ckpt"
        )
    assert (tmp_path / "ckpt" / "head" / "training_metadata.json").exists()

    monkeypatch.setattr(ft, "EpochLines", EpochLines)
    result = finetune(
        build_backbone(32, width=4, seed=1), train, val, 3, params, PIXELS, checkpoints=tmp_path / "ckpt"
    )
    assert result.resumed == {"head": 2}
    assert len(result.history["head"]["loss"]) == 4  # epochs 3..6 only
    assert not (tmp_path / "ckpt").exists()  # removed once training ended normally
