"""`finetune.distribute`: phase 2 of the fixed recipe under tf.distribute. Two CPU workers on
127.0.0.1 (`MultiWorkerMirroredStrategy`, `TF_CONFIG`) train the same model as one process,
within the noise; `mirrored` (one CPU replica here) as well; a failing worker ends the stage in
one line; the strategy is refused with the search on."""

import numpy as np
import pytest
from conftest import pattern_image

from tasks.core.config import ConfigError, FinetuneParams, load_params
from tasks.core.errors import UserError
from tasks.evaluation import evaluate
from tasks.modality.pixels import Pixels
from tasks.models import distribute
from tasks.models.backbones import build_backbone, build_classifier, build_head
from tasks.models.finetune import finetune

PIXELS = Pixels(16)


@pytest.fixture
def splits(on_disk):
    def split(n_per_class: int, seed: int):
        rng = np.random.default_rng(seed)
        y = np.repeat(np.arange(3), n_per_class)
        return on_disk(np.stack([pattern_image(int(k), rng, 16) for k in y]), y)

    return split(16, 0), split(6, 1), split(10, 2)


def trained(splits, tmp_path, kind: str):
    train, val, test = splits
    params = FinetuneParams(
        head_epochs=60,
        head_learning_rate=0.05,
        finetune_epochs=4,
        finetune_learning_rate=3e-3,
        unfreeze_layers=2,
        batch_size=8,
        patience=10,
        distribute=kind,
    )
    result = finetune(
        build_backbone(16, width=4, seed=3), train, val, 3, params, PIXELS, checkpoints=tmp_path / kind
    )
    probabilities = result.model.predict(test.examples(PIXELS).astype("float32"), verbose=0)
    return result, evaluate.metrics(test.y, probabilities)["accuracy"]


def test_two_workers_on_localhost_train_what_one_process_trains(splits, tmp_path, monkeypatch, capsys):
    alone, alone_accuracy = trained(splits, tmp_path, "none")
    monkeypatch.setenv("TRANSFEROPS_PROGRESS", "1")
    shared, shared_accuracy = trained(splits, tmp_path, "multi_worker")
    # the workers really ran as two replicas in sync (the chief's record of its strategy)
    assert "finetune: phase 2 trained as 2 replicas in sync" in capsys.readouterr().err.splitlines()
    assert len(shared.history["finetune"]["loss"]) == len(alone.history["finetune"]["loss"]) == 4
    # the same training within the noise: each replica normalises its half of a batch and draws
    # its own dropout, so training losses drift apart a little (12% by epoch 4 seen); the
    # validation losses (no dropout, moving statistics) agree closely, test accuracy to one image
    np.testing.assert_allclose(
        shared.history["finetune"]["val_loss"], alone.history["finetune"]["val_loss"], rtol=0.08
    )
    assert abs(shared_accuracy - alone_accuracy) <= 1 / 30 + 1e-9
    assert alone_accuracy > 0.8  # it learned the task (chance: 1/3)


def test_mirrored_trains_like_one_process(splits, tmp_path):
    alone, alone_accuracy = trained(splits, tmp_path, "none")
    mirrored, mirrored_accuracy = trained(splits, tmp_path, "mirrored")
    # one CPU replica here: the same steps, but the classifier is rebuilt in the strategy's scope,
    # so its dropout draws differ from the one-process run's; validation losses agree closely
    np.testing.assert_allclose(
        mirrored.history["finetune"]["val_loss"], alone.history["finetune"]["val_loss"], rtol=0.08
    )
    assert abs(mirrored_accuracy - alone_accuracy) <= 1 / 30 + 1e-9


def test_a_failing_worker_ends_phase_two_in_one_line(splits, tmp_path):
    train, val, _ = splits
    (train.root / train.files[0]).write_bytes(b"not an image any more")  # after the split was made
    params = FinetuneParams(finetune_epochs=1, unfreeze_layers=1, batch_size=8, distribute="multi_worker")
    backbone = build_backbone(16, width=4)
    classifier = build_classifier(backbone, build_head(16, 3, 0.0)[1], 0.0)
    with pytest.raises(UserError) as failed:
        distribute.run(classifier, distribute.Job(train, val, PIXELS, params), tmp_path / "job", [])
    message = str(failed.value)
    assert message.startswith("finetune.distribute: worker ") and "\n" not in message
    assert "worker-" in message and "finetune.distribute: none" in message


def test_distribute_is_refused_with_the_search_on(tmp_path):
    with pytest.raises(ConfigError, match=r"set search\.enabled: false"):
        load_params(None, {"finetune": {"distribute": "multi_worker"}})
