"""What a person at a terminal sees during a run: the stage being run, a progress bar with a
rate and ETA over every pass over images (ingest, feature extraction, each epoch's batches,
evaluation, predict), one line per epoch. Quiet when stderr is not a terminal (logs,
CI, a scheduled run) or with `--quiet`; TRANSFEROPS_PROGRESS=1/0 forces it on or off."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

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


@contextmanager
def counting(description: str, total: int | None, unit: str = "img") -> Iterator[Callable[[int], object]]:
    """A bar that the caller advances by n (`update(n)`): images done of `total`, rate, ETA."""
    if not enabled():
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=description, file=sys.stderr, leave=False, unit=unit) as shown:
        yield shown.update
