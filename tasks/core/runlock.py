"""One run at a time per project and registered model.

Two `train`/`retrain` runs of the same model in one project would both evaluate against the
same champion and race to move the alias. An exclusive lock (`flock`) on a file under
`<root>/.transferops/locks/` refuses the second run with a message naming the first; the
kernel drops the lock when its process dies, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.core.errors import UserError


class RunInProgress(UserError):
    """Another run holds the lock."""


_held: dict[Path, int] = {}  # locks this process holds -> depth (the CLI takes it, then the flow)


def lock_path(root: Path, name: str) -> Path:
    """The lock file of model `name` in project `root` (a name that is not a plain file name,
    `a/b` or `..`, is hashed: it never builds a path outside the locks folder)."""
    folder = Path(root).resolve() / ".transferops" / "locks"
    plain = name and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name
    stem = name if plain and len(name) <= 100 else "model-" + hashlib.sha256(name.encode()).hexdigest()[:16]
    return folder / f"{stem}.lock"


@contextmanager
def exclusive(root: Path, name: str) -> Iterator[Path]:
    """Hold `<root>/.transferops/locks/<name>.lock` for the duration, or raise RunInProgress.
    Re-entrant within a process: the command line takes it before anything slow starts (a
    refused run ends at once), and the flow, which a deployment's worker runs without the
    command line, takes it again."""
    path = lock_path(root, name)
    if path in _held:
        _held[path] += 1
        try:
            yield path
        finally:
            _held[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
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
        _held[path] = 1
        try:
            yield path
        finally:
            del _held[path]
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
