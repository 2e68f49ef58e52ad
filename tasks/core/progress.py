"""What a person at a terminal sees during a run: the stage being run, a progress bar for
ingest and feature extraction, one line per epoch. Quiet when stderr is not a terminal (logs,
CI, a scheduled run) or with `--quiet`; TRANSFEROPS_PROGRESS=1/0 forces it on or off."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import keras

T = TypeVar("T")


def enabled() -> bool:
    forced = os.environ.get("TRANSFEROPS_PROGRESS")
    if forced is not None:
        return forced == "1"
    return sys.stderr.isatty()


def say(message: str) -> None:
    """One line on stderr, when progress is on."""
    if enabled():
        print(message, file=sys.stderr, flush=True)


def bar(items: Iterable[T], description: str, total: int | None = None, unit: str = "file") -> Iterator[T]:
    """`items` with a tqdm bar on stderr when progress is on."""
    if not enabled():
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, desc=description, total=total, file=sys.stderr, leave=False, unit=unit)


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
