"""What a person at a terminal sees while a model trains: a bar over each epoch's batches and
one line per epoch (`tasks.core.progress` decides whether anything is shown)."""

from __future__ import annotations

import sys
import time
from typing import Any

import keras

from tasks.core.progress import enabled, say


class BatchBar(keras.callbacks.Callback):
    """A bar over each epoch's training batches (rate and ETA within the epoch), when progress
    is on; `steps` is the number of batches in an epoch."""

    def __init__(self, phase: str, steps: int | None) -> None:
        super().__init__()
        self.phase, self.steps = phase, steps
        self.bar: Any = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if enabled():
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.steps,
                desc=f"{self.phase} training, pass {epoch + 1}",
                file=sys.stderr,
                leave=False,
                unit="batch",
            )

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EpochLines(keras.callbacks.Callback):
    """`<phase> epoch 3/40  loss 0.512  accuracy 0.830  val_loss 0.601  val_accuracy 0.800  1.2s`."""

    def __init__(self, phase: str, epochs: int) -> None:
        super().__init__()
        self.phase, self.epochs, self.start = phase, epochs, 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        values = "  ".join(f"{k} {float(v):.4f}" for k, v in (logs or {}).items() if k != "learning_rate")
        say(
            f"{self.phase} epoch {epoch + 1}/{self.epochs}  {values}  {time.perf_counter() - self.start:.1f}s"
        )
