"""Fine-tuning in two phases.

Phase 1 trains only the head, on features the frozen backbone computed once (the backbone's
forward pass is the costly part, and frozen it gives the same features every epoch; the caller
passes them from the on-disk cache, `tasks.models.features`).
Phase 2 unfreezes the top `unfreeze_layers` weighted layers of the backbone and trains the
whole classifier at a lower learning rate on images streamed from the files (`tf.data`,
reshuffled every epoch); BatchNorm layers stay frozen and in inference mode.
Both phases stop early on validation loss and keep their best weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tasks.core import progress
from tasks.core.config import FinetuneParams
from tasks.data.datasets import Split
from tasks.modality import Encoding
from tasks.models import distill, distribute, features
from tasks.models.backbones import build_classifier, build_head, glorot, input_like, weighted_layers
from tasks.models.checkpoints import callback, finished, resumed_epoch
from tasks.models.epochs import BatchBar, EpochLines


@dataclass
class FinetuneResult:
    model: keras.Model
    history: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # phase -> metric -> epochs
    unfrozen: list[str] = field(default_factory=list)
    resumed: dict[str, int] = field(default_factory=dict)  # phase -> epochs restored from a checkpoint
    fingerprint: str = ""  # the key of the stage that made it (flows.stages.caching)
    events: Path | None = None  # its TensorBoard event files (tasks.models.checkpoints.events_folder)
    search: dict[str, Any] | None = None  # the strategy search (tasks/search/): chosen, trials
    transfer_set: dict[str, Any] | None = None  # distillation's unlabelled images: folder, images, digest


def _resumable(
    checkpoints: Path | None, phase: str, resumed: dict[str, int]
) -> list[keras.callbacks.Callback]:
    """BackupAndRestore for `phase` under `checkpoints`, noting in `resumed` where it resumes."""
    if checkpoints is None:
        return []
    backup_dir = checkpoints / phase
    epoch = resumed_epoch(backup_dir)
    if epoch:
        resumed[phase] = epoch
    return [callback(backup_dir)]


def _tensorboard(events: Path | None, phase: str, histogram_freq: int) -> list[keras.callbacks.Callback]:
    """TensorBoard event files of `phase` under `events/<phase>/{train,validation}`: scalars per
    epoch, weight histograms every `histogram_freq` epochs (0: none), no graph."""
    if events is None:
        return []
    return [
        keras.callbacks.TensorBoard(
            str(events / phase), histogram_freq=histogram_freq, write_graph=False, update_freq="epoch"
        )
    ]


def _early_stopping(patience: int) -> keras.callbacks.Callback:
    return keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)


def unfreeze_top(backbone: keras.Model, n_layers: int) -> list[str]:
    """Make the top `n_layers` layers that have weights trainable, BatchNorm excluded."""
    backbone.trainable = True
    chosen = weighted_layers(backbone)[-n_layers:] if n_layers > 0 else []
    for layer in backbone.layers:
        layer.trainable = layer in chosen
    return [layer.name for layer in chosen]


def train_head(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    params: FinetuneParams,
    init_head: list[np.ndarray] | None = None,
    checkpoints: Path | None = None,
    events: Path | None = None,
    history: dict[str, dict[str, list[float]]] | None = None,
    resumed: dict[str, int] | None = None,
    teacher: tuple[np.ndarray, np.ndarray] | None = None,
) -> keras.layers.Layer:
    """Phase 1: the softmax head alone on (frozen features, labels); returns its Dense layer.
    Its curve goes to `history["head"]`, a resumed checkpoint to `resumed`. With `teacher`
    (the train and val targets of tasks.models.distill), it learns the teacher's soft targets
    mixed with the labels (params `distill_temperature`, `distill_soft_weight`)."""
    head_model, dense = build_head(train[0].shape[1], num_classes, params.dropout, params.seed)
    if init_head is not None:
        dense.set_weights(init_head)
    loss, metric = distill.objective(params, teacher is not None)
    y_train, y_val = teacher if teacher is not None else (train[1], val[1])
    head_model.compile(
        optimizer=keras.optimizers.Adam(params.head_learning_rate), loss=loss, metrics=[metric]
    )
    if params.head_epochs > 0:
        fitted = head_model.fit(  # streamed from the (memory-mapped) features: flat in N
            features.row_batches(train[0], y_train, params.batch_size, params.seed),
            validation_data=features.row_batches(val[0], y_val, params.batch_size, None),
            steps_per_epoch=_steps(len(train[0]), params.batch_size),
            epochs=params.head_epochs,
            shuffle=False,  # the stream reshuffles itself every epoch
            callbacks=[
                _early_stopping(params.patience),
                EpochLines("head", params.head_epochs),
                *_resumable(checkpoints, "head", resumed if resumed is not None else {}),
                *_tensorboard(events, "head", params.histogram_freq),
            ],
            verbose=0,
        )
        if history is not None:
            history["head"] = {k: [float(v) for v in vs] for k, vs in fitted.history.items()}
    return dense


def finetune(
    backbone: keras.Model,
    train: Split,
    val: Split,
    num_classes: int,
    params: FinetuneParams,
    encoding: Encoding,
    init_head: list[np.ndarray] | None = None,
    train_features: np.ndarray | None = None,
    val_features: np.ndarray | None = None,
    checkpoints: Path | None = None,
    events: Path | None = None,
    teacher: tuple[np.ndarray, np.ndarray] | None = None,
) -> FinetuneResult:
    """Fine-tune `backbone` on the images of `train` (decoded as `pixels` says); returns the
    classifier and its history.

    `init_head` (the head's [kernel, bias], e.g. from the champion) warm-starts the head.
    `train_features` / `val_features`: the frozen features of the splits when the caller has
    them (the feature cache); computed here otherwise.
    `checkpoints`: a folder for per-epoch checkpoints (tasks.models.checkpoints); a killed run resumes.
    `events`: a folder for TensorBoard event files, one subfolder per phase.
    `teacher`: distillation targets of the train and val splits (tasks.models.distill): both
    phases learn the teacher's soft targets mixed with the labels.
    """
    keras.utils.set_random_seed(params.seed)
    backbone.trainable = False
    f_train = (
        train_features
        if train_features is not None
        else features.features(backbone, "", train, encoding, None, "train features")
    )
    f_val = (
        val_features
        if val_features is not None
        else features.features(backbone, "", val, encoding, None, "val features")
    )
    history: dict[str, dict[str, list[float]]] = {}
    resumed: dict[str, int] = {}
    dense = train_head(
        (f_train, train.y),
        (f_val, val.y),
        num_classes,
        params,
        init_head,
        checkpoints,
        events,
        history,
        resumed,
        teacher,
    )

    classifier = build_classifier(backbone, dense, params.dropout, params.seed)
    unfrozen: list[str] = []
    if params.finetune_epochs > 0 and params.unfreeze_layers > 0:
        unfrozen = unfreeze_top(backbone, params.unfreeze_layers)
        if teacher is None:
            job = distribute.Job(train, val, encoding, params)
        else:  # the same images, the teacher's targets in place of the labels
            targets = (replace(s, y=t) for s, t in ((train, teacher[0]), (val, teacher[1])))
            job = distribute.Job(*targets, encoding, params, distilled=True)
        history["finetune"] = distribute.run(
            classifier,
            job,
            checkpoints / "distribute" if checkpoints is not None else None,
            [
                BatchBar("finetune", _steps(len(train), params.batch_size)),
                EpochLines("finetune", params.finetune_epochs),
                *_resumable(checkpoints, "finetune", resumed),
                *_tensorboard(events, "finetune", params.histogram_freq),
            ],
            progress.say,
        )
    backbone.trainable = False
    finished(checkpoints)
    return FinetuneResult(
        model=classifier, history=history, unfrozen=unfrozen, resumed=resumed, events=events
    )


def train_from_scratch(
    backbone: keras.Model,
    train: Split,
    val: Split,
    encoding: Encoding,
    num_classes: int,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    patience: int,
    dropout: float = 0.2,
    seed: int = 0,
    checkpoints: Path | None = None,
    resumed: dict[str, int] | None = None,
    events: Path | None = None,
    histogram_freq: int = 0,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train a classifier end to end, every layer trainable (pretraining; the scratch baseline
    of the strategy search, with augmentation, is scratch.train_scratch).

    Unlike fine-tuning, BatchNorm here learns its statistics (training=True in fit)."""
    keras.utils.set_random_seed(seed)
    backbone.trainable = True
    inputs = input_like(backbone)
    x = keras.layers.Dropout(dropout, seed=seed + 1)(backbone(inputs))
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", kernel_initializer=glorot(seed), name="head"
    )(x)
    model = keras.Model(inputs, outputs, name="classifier")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    h = model.fit(
        train.batches(encoding, batch_size, shuffle_seed=seed),
        validation_data=val.batches(encoding, batch_size),
        epochs=epochs,
        shuffle=False,  # the stream reshuffles itself every epoch
        callbacks=[
            _early_stopping(patience),
            BatchBar("train", _steps(len(train), batch_size)),
            EpochLines("train", epochs),
            *_resumable(checkpoints, "train", resumed if resumed is not None else {}),
            *_tensorboard(events, "train", histogram_freq),
        ],
        verbose=0,
    )
    return model, {k: [float(v) for v in vs] for k, vs in h.history.items()}


def _steps(n: int, batch_size: int) -> int:
    return -(-n // batch_size)
