"""Untrusted files and names: how any stage lists a data folder, reads one of its files, and
prints a name it found there.

The folder is untrusted, and nothing outside it is ever read:
- the walk never follows a symbolic link to a folder (a class folder that is a link is an
  error, named);
- a symbolic link to a file is followed only when it resolves to a regular file inside the
  data root (a duplicate under another name, as `cp -s` or dataset tools make them); a link
  out of the root, a dangling link or a link to a folder is an error, and is not read;
- FIFOs, sockets and devices are errors, never opened for reading (a FIFO would block);
- files are opened with O_NOFOLLOW and checked to be regular after opening, so a file
  swapped for a link between listing and reading is refused, not followed;
- a file name that is not valid UTF-8 is an error (rename it), never decoded.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

# Files that operating systems drop into folders; recorded in the manifest and skipped.
SYSTEM_FILES = {".ds_store", "thumbs.db", "desktop.ini", "__macosx"}


def printable(name: str) -> str:
    """A file or class name safe to print in a terminal or a log line: control characters
    (newlines, ANSI escapes) and bytes that are not UTF-8 become backslash escapes."""
    out = []
    for char in name:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char.isprintable():
            out.append(char)
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(out)


# A table of examples (tasks/data/tables.py): suffix -> its format
TABLE_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}


def is_table(path: Path | str) -> bool:
    """A table file (by its suffix), not a folder of examples."""
    return Path(path).suffix.lower() in TABLE_FORMATS and Path(path).is_file()


def is_ignored(path: Path) -> bool:
    """Hidden and OS bookkeeping files are not images of the dataset."""
    return path.name.startswith(".") or path.name.lower() in SYSTEM_FILES


def utf8(name: str) -> bool:
    """False for a name holding bytes that are not UTF-8 (Python keeps them as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_SPECIAL = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


class UnsafePathError(OSError):
    """A path that would leave the data root or is not a regular file."""


@dataclass(frozen=True)
class Entry:
    """One thing found in the data folder, before it is read."""

    rel: str  # POSIX path relative to the root (escaped with `printable` when not UTF-8)
    target: Path | None  # the regular file to read; None when it must not be read
    error: str | None  # why it is not read


def open_regular(path: Path) -> bytes:
    """Read a regular file without following a final symbolic link or blocking on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafePathError(f"{path}: not a regular file")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def resolve_inside(root: Path, rel: str) -> Path:
    """The regular file `rel` names under `root`, links resolved, refused when it lies outside."""
    real_root = root.resolve()
    path = (root / rel).resolve(strict=True)
    if not path.is_relative_to(real_root):
        raise UnsafePathError(f"{rel}: resolves outside the data folder {root}")
    return path


def _in_part(root: Path, rel: str, parts: tuple[Path, ...]) -> tuple[Path, str]:
    """The folder `rel` lies in (`root`, or the part of a joined split it names) and its path there."""
    if not parts:
        return root, rel
    path = root / rel
    for part in parts:
        if path.is_relative_to(part):  # by name; resolve_inside then follows links and `..`
            return part, path.relative_to(part).as_posix()
    raise UnsafePathError(f"{rel}: outside the folders of its split")


def paths_inside(root: Path, rels: list[str], parts: tuple[Path, ...] = ()) -> list[str | None]:
    """Where each of `rels` leads, as `read_inside` checks it (links resolved, inside `root` or
    its part of a joined split), each folder resolved once: the real path, or None where
    `read_inside` would refuse it."""
    bases = {part: os.path.realpath(part) + os.sep for part in (parts or (root,))}
    out: list[str | None] = []
    for rel in rels:
        try:
            part, inner = _in_part(root, rel, parts)
            real = os.path.realpath(os.path.join(part, inner), strict=True)
        except (OSError, UnsafePathError):
            out.append(None)
            continue
        out.append(real if real.startswith(bases[part]) else None)
    return out


def read_inside(root: Path, rel: str, parts: tuple[Path, ...] = ()) -> bytes:
    """The bytes of `rel` under `root`, only if it is (or links to) a regular file inside it.
    With `parts` (a split joined from folders under `root`), inside the part `rel` names."""
    return open_regular(resolve_inside(*_in_part(root, rel, parts)))


def size_inside(root: Path, rel: str, parts: tuple[Path, ...] = ()) -> int:
    """The size in bytes of what `read_inside` reads, 0 where it would refuse: a hint of an
    example's length that reads nothing."""
    try:
        return resolve_inside(*_in_part(root, rel, parts)).stat().st_size
    except (OSError, RuntimeError, UnsafePathError):
        return 0


def _link_entry(root: Path, real_root: Path, path: Path, rel: str) -> Entry:
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return Entry(rel, None, "symbolic link that leads nowhere (broken or a loop): not read")
    if not target.is_relative_to(real_root):
        return Entry(rel, None, "symbolic link to outside the data folder: not read")
    if target.is_dir():
        return Entry(rel, None, "symbolic link to a folder: not followed (copy the folder in instead)")
    if not target.is_file():
        return Entry(rel, None, "symbolic link to something that is not a regular file: not read")
    return Entry(rel, target, None)


def walk(root: Path) -> list[Entry]:
    """Every entry under `root`, sorted by path, without following any link to a folder."""
    real_root = root.resolve()
    entries: list[Entry] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as it:
            found = sorted(it, key=lambda e: e.name)
        for item in found:
            path = Path(item.path)
            rel = path.relative_to(root).as_posix()
            if not utf8(rel):
                entries.append(Entry(printable(rel), None, "file name is not valid UTF-8: rename it"))
                continue
            mode = item.stat(follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                entries.append(_link_entry(root, real_root, path, rel))
            elif stat.S_ISDIR(mode) and is_ignored(path):  # .git, .ipynb_checkpoints: not a class
                entries.append(Entry(f"{rel}/", None, "hidden folder: skipped"))
            elif stat.S_ISDIR(mode):
                stack.append(path)
            elif stat.S_ISREG(mode):
                entries.append(Entry(rel, path, None))
            else:
                kind = _SPECIAL.get(stat.S_IFMT(mode), "not a regular file")
                entries.append(Entry(rel, None, f"{kind}: not read"))
    return sorted(entries, key=lambda e: e.rel)
