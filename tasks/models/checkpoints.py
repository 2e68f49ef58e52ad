"""Per-epoch checkpoints, so a training killed half-way resumes where it stopped.

A checkpoint folder is keyed by everything that determines what is trained (the stage's cache
key: data, params, the backbone it starts from, the source of the training code): a rerun with the same
inputs finds it and resumes from the last finished epoch; any change starts afresh in another
folder. Keras' BackupAndRestore writes the weights, optimizer state and epoch after each epoch
and deletes the folder when training ends normally. Folders live under `<root>/.transferops/`,
which is safe to delete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import keras

METADATA = "training_metadata.json"  # written by BackupAndRestore: {"epoch": N, ...}


def folder(root: Path, stage: str, key: str) -> Path:
    """`<root>/.transferops/checkpoints/<stage>-<key>`, `key` naming what is trained (the
    stage's cache key: data, params, starting point, code)."""
    return Path(root) / ".transferops" / "checkpoints" / f"{stage}-{key[:16]}"


def events_folder(root: Path, stage: str, key: str) -> Path:
    """`<root>/.transferops/tensorboard/<stage>-<key>`: the TensorBoard event files of the
    training keyed `key`. Emptied when its training starts afresh (no checkpoint to resume
    from), so a forced rerun does not draw its curves over the last run's."""
    events = Path(root) / ".transferops" / "tensorboard" / f"{stage}-{key[:16]}"
    if not folder(root, stage, key).exists():
        shutil.rmtree(events, ignore_errors=True)
    return events


def resumed_epoch(backup_dir: Path) -> int | None:
    """The epoch a phase will resume from (epochs already finished), or None for a fresh start."""
    try:
        return int(json.loads((backup_dir / METADATA).read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return None


# h5py errors of a write that failed (a full disk), kept alive: freeing the half-closed HDF5
# objects they hold crashes the interpreter (seen: SIGSEGV). The command line exits at once.
_FAILED_WRITES: list[OSError] = []


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore, but each checkpoint is written to a new file and renamed into
    place: a kill in the middle of a write (seen in the SIGKILL test: a truncated .h5 that
    failed the resume) leaves the previous checkpoint whole. With `min_seconds`, an epoch ending
    sooner than that after the last write is not written: a small network's epoch can take less
    than the write (0.14 s for the stand-in on 2 cores, 75 epochs of the scratch baseline: 10.7 s of
    its 31.9 s), and a kill then costs at most `min_seconds` of training."""

    def __init__(self, backup_dir: str, min_seconds: float = 0.0) -> None:
        super().__init__(backup_dir)
        self.min_seconds = min_seconds
        self._written = -float("inf")

    def _save_model(self) -> None:
        if time.monotonic() - self._written < self.min_seconds:
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        incoming = os.path.join(self.backup_dir, "incoming.weights.h5")
        try:
            self.model.save_weights(incoming, overwrite=True)
        except OSError as exc:  # a full disk: the same error, naming the file, without h5py's objects
            _FAILED_WRITES.append(exc)
            Path(incoming).unlink(missing_ok=True)
            raise OSError(exc.errno, os.strerror(exc.errno) if exc.errno else str(exc), incoming) from None
        os.replace(incoming, self._weights_path)
        metadata = {"epoch": self._current_epoch, "batch": self._last_batch_seen}
        incoming = f"{self._training_metadata_path}.incoming"
        Path(incoming).write_text(json.dumps(metadata))
        os.replace(incoming, self._training_metadata_path)
        self._written = time.monotonic()


def callback(backup_dir: Path, min_seconds: float = 0.0) -> keras.callbacks.Callback:
    """A checkpoint of the training after each epoch (at most one every `min_seconds`) in `backup_dir`."""
    return AtomicBackupAndRestore(str(backup_dir), min_seconds)


def finished(folder: Path | None) -> None:
    """Training ended normally: nothing is left to resume."""
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
