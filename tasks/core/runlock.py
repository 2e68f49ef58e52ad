"""One run at a time per project and registered model.

Two `train`/`retrain` runs of the same model in one project would both evaluate against the
same champion and race to move the alias. An exclusive lock (`flock`) on a file under
`<root>/.transferops/locks/` refuses the second run with a message naming the first; the
kernel drops the lock when its process dies, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.core.errors import UserError


class RunInProgress(UserError):
    """Another run holds the lock."""


@contextmanager
def exclusive(root: Path, name: str) -> Iterator[Path]:
    """Hold `<root>/.transferops/locks/<name>.lock` for the duration, or raise RunInProgress."""
    folder = Path(root) / ".transferops" / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise RunInProgress(
                f"another run of {name} is in progress in {root} ({holder}); wait for it to end, or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
