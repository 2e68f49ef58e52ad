"""The scratch baseline of the strategy search: the architecture of the smallest-input
backbone (or its encoding's own small network: texts' bag of token embeddings) with fresh
weights, every layer trained (BatchNorm too), on its own budget.

It depends on nothing else the search trains, so on a Dask runner (tasks.core.runner) it starts
on a worker as the search begins and trains while the flow's process runs the head trials and
the fine-tune bracket; the flow takes it back as a file reference (its classifier saved in the
search's checkpoints folder, which every worker sees), never as a pickled model. A worker killed
mid-way costs the epochs since its last backup: Dask runs the task again on another worker and
its backup (tasks.models.checkpoints) resumes it after its last finished epoch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np

from tasks.core import runner
from tasks.core.config import FinetuneParams, SearchParams
from tasks.data.datasets import Split
from tasks.modality import Augmentation
from tasks.models import checkpoints
from tasks.models.trainer import build_trainer
from tasks.search.records import Deadline, SearchBackbone, TrialRecord, say

SCRATCH = "scratch"  # the scratch baseline's trial id
BACKUP_SECONDS = 2.0  # its epochs can be shorter than a checkpoint's write: one every 2 s at most


def architecture(smallest: SearchBackbone) -> SearchBackbone:
    """What the scratch baseline trains: the encoding's own small network when it has one
    (`Encoding.scratch`: texts' bag of token embeddings, as fastText's classifier), else the
    smallest-input backbone's architecture (its weights are drawn afresh)."""
    own = smallest.encoding.scratch()
    if own is None:
        return smallest
    none = np.zeros((0, 1), dtype="float32")  # trained end to end: no frozen features
    return SearchBackbone(f"scratch:{own.name}", own, smallest.encoding, none, none)


def scratch_patience(params: SearchParams, n_train: int, batch_size: int) -> int:
    """Epochs without a better val accuracy before scratch stops: `scratch_patience`, or fewer
    when that many epochs are more than `scratch_patience_steps` optimizer steps (never under 5).
    Whether training has stalled is a matter of updates: 20 epochs of 2 steps (10 labels per
    class) are 40 updates, 20 epochs of 22 steps (the demo) are 440."""
    if params.scratch_patience_steps is None:
        return params.scratch_patience
    steps = max(1, -(-n_train // batch_size))
    return min(params.scratch_patience, max(5, -(-params.scratch_patience_steps // steps)))


def train_scratch(
    architecture: SearchBackbone,
    train: Split,
    val: Split,
    num_classes: int,
    params: SearchParams,
    finetune: FinetuneParams,
    augment: Augmentation | None,
    backup: Path | None = None,
    events: Path | None = None,
    deadline: float | None = None,
) -> tuple[TrialRecord, keras.Model]:
    """The scratch baseline: `architecture` with fresh weights, every layer trained on augmented,
    streamed batches for up to `scratch_epochs`, stopped `scratch_patience(...)` epochs after
    val_accuracy last improved; the classifier of its best epoch. `backup` makes a killed run
    resume at its last epoch (tasks.models.checkpoints; the best-epoch memory restarts there)."""
    values = {"strategy": SCRATCH, "learning_rate": params.scratch_learning_rate}
    values["backbone"] = architecture.name
    trainer = build_trainer(values, {architecture.name: architecture.model}, num_classes, finetune, augment)
    callbacks: list[keras.callbacks.Callback] = [  # Keras restores the best epoch at the end, stopped or not
        keras.callbacks.EarlyStopping(
            monitor="val_accuracy",
            patience=scratch_patience(params, len(train), finetune.batch_size),
            restore_best_weights=True,
        ),
        Deadline(deadline),
    ]
    if backup is not None:
        callbacks.append(checkpoints.callback(backup, BACKUP_SECONDS))  # atomic: a kill keeps the last one
    if events is not None:
        callbacks.append(keras.callbacks.TensorBoard(str(events), write_graph=False))
    fitted = trainer.fit(
        train.batches(architecture.encoding, finetune.batch_size, shuffle_seed=finetune.seed),
        validation_data=val.batches(architecture.encoding, finetune.batch_size),
        epochs=params.scratch_epochs,
        callbacks=callbacks,
        shuffle=False,  # the stream reshuffles itself every epoch
        verbose=0,
    )
    history = {k: [float(v) for v in values] for k, values in fitted.history.items()}
    epochs = len(history.get("val_accuracy", []))
    score = max(history["val_accuracy"]) if epochs else float("nan")
    record = TrialRecord(SCRATCH, values, score, history, epochs)
    say(record)
    return record, trainer.classifier


@dataclass
class ScratchJob:
    """What a worker needs to train the baseline: no arrays (the architecture's cached features
    are left behind), the splits as file lists, the time left rather than a clock reading."""

    architecture: SearchBackbone
    train: Split
    val: Split
    num_classes: int
    params: SearchParams
    finetune: FinetuneParams
    augment: Augmentation | None
    folder: Path  # the search's checkpoints folder: backups and the trained classifier
    events: Path | None
    seconds_left: float | None


def train_job(job: ScratchJob) -> tuple[TrialRecord, keras.Model]:
    """Train the baseline in this process: its record and classifier."""
    return train_scratch(
        job.architecture,
        job.train,
        job.val,
        job.num_classes,
        job.params,
        job.finetune,
        job.augment,
        backup=job.folder / SCRATCH,
        events=job.events,
        deadline=None if job.seconds_left is None else time.monotonic() + job.seconds_left,
    )


def run_scratch(job: ScratchJob) -> tuple[TrialRecord, str]:
    """A worker's task: train the baseline and save its classifier; the record and the file."""
    record, model = train_job(job)
    saved = job.folder / f"{SCRATCH}.keras"
    model.save(saved)
    return record, str(saved)


def start_on_runner(job: ScratchJob) -> runner.Pending:
    """The baseline started now on the flow's Dask runner; `.result()` waits for it and loads
    its classifier: (record, classifier)."""
    empty = np.empty((0, 0), dtype=np.float32)
    light = replace(job, architecture=replace(job.architecture, train_features=empty, val_features=empty))

    def loaded(done: tuple[TrialRecord, str]) -> tuple[TrialRecord, keras.Model]:
        record, saved = done
        return record, keras.saving.load_model(saved, compile=False, safe_mode=True)

    return runner.current().submit(run_scratch, light).then(loaded)
