"""Ingest: a data folder -> a manifest with one row per entry.

The folder layout is the one `keras.utils.image_dataset_from_directory` (and its text twin)
reads: `<root>/<class>/<example>`. Every file is hashed and inspected once by its modality
(images: fully decoded), so later stages can trust the `decodable` column and the `error`
column says why a file cannot be used. The folder is untrusted: it is listed and read only
through `tasks.core.files`, which never leaves it. Every error row blocks validation, so the
run stops and names each entry.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from tasks.core import progress
from tasks.core.files import Entry, is_ignored, open_regular, printable, utf8, walk
from tasks.modality import Modality

MANIFEST_COLUMNS = [
    "path",  # relative to the data root, POSIX separators
    "label",  # the class folder; None for a file outside any class folder
    "sha256",
    "md5",  # what DVC hashes with; lets the manifest reproduce DVC's directory hash
    "size",  # bytes
    "ignored",  # hidden/system file, skipped by design
    "decodable",
    "error",  # why the entry cannot be used; None when it can
]
_OWN_AFTER = 5  # a modality's own columns (`Modality.columns`: an image's format, width, ...) follow "size"


def columns(modality: Modality) -> list[str]:
    """The manifest's columns for `modality`, in order."""
    return [*MANIFEST_COLUMNS[:_OWN_AFTER], *modality.columns, *MANIFEST_COLUMNS[_OWN_AFTER:]]


def snapshot(root: Path) -> list[tuple[str, int, int, int]]:
    """What a folder holds, by name, size, modification time and inode of each file (and of
    `<root>.dvc`), without reading any: the cheap key DVC's own stat cache uses. Any change
    to a file changes it; touching a file changes it too (a recomputation, not an error)."""
    found = []
    for entry in walk(root):
        if entry.target is None:
            found.append((entry.rel, -1, -1, -1))
            continue
        info = os.stat(entry.target)
        found.append((entry.rel, info.st_size, info.st_mtime_ns, info.st_ino))
    dvc_file = Path(str(root).rstrip("/") + ".dvc")
    if dvc_file.is_file():
        info = dvc_file.stat()
        found.append((dvc_file.name, info.st_size, info.st_mtime_ns, info.st_ino))
    return found


def _row(entry: Entry, modality: Modality, anywhere: bool = False) -> dict[str, object]:
    parts = entry.rel.rstrip("/").split("/")  # a skipped folder is named with a trailing /
    row: dict[str, object] = dict.fromkeys(columns(modality))
    row.update(
        path=entry.rel,
        label=parts[0] if len(parts) == 2 else None,
        ignored=is_ignored(Path(entry.rel)),
        decodable=False,
        error=entry.error,
    )
    if entry.target is None:
        if row["ignored"]:
            row["error"] = None  # a hidden link or pipe is skipped like any hidden file
        return row
    try:
        data = open_regular(entry.target)
    except OSError as exc:
        row["error"] = f"cannot read: {exc.strerror or exc}"
        return row
    row.update(
        sha256=hashlib.sha256(data).hexdigest(),
        md5=hashlib.md5(data, usedforsecurity=False).hexdigest(),
        size=len(data),
    )
    if row["ignored"]:
        return row
    if len(parts) != 2 and not anywhere:
        row["error"] = f"not directly inside a class folder (<root>/<class>/<{modality.noun}>)"
        return row
    if not data:
        row["error"] = "empty file (0 bytes)"
        return row
    row.update(modality.inspect(data))
    return row


def scan(root: Path | str, modality: Modality, workers: int = 4, anywhere: bool = False) -> pd.DataFrame:
    """List, hash and inspect every entry under `root`; one manifest row per entry. `anywhere`:
    an example at any depth is usable (unlabelled ones), not only inside a class folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data folder not found")
    entries = walk(root)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = list(
            progress.bar(
                pool.map(lambda e: _row(e, modality, anywhere), entries), f"ingest {root.name}", len(entries)
            )
        )
    manifest = pd.DataFrame(rows, columns=columns(modality))
    for col in ("size", *modality.integer_columns):
        manifest[col] = manifest[col].astype("Int64")
    manifest["decodable"] = manifest["decodable"].astype(bool)
    manifest["ignored"] = manifest["ignored"].astype(bool)
    return manifest


def class_folders(root: Path | str) -> list[str]:
    """Class folder names, including empty ones (which the manifest cannot show). Links to
    folders are not class folders (the manifest names them as errors)."""
    return sorted(
        p.name if utf8(p.name) else printable(p.name)
        for p in Path(root).iterdir()
        if p.is_dir() and not p.is_symlink() and not is_ignored(p)
    )


def usable(manifest: pd.DataFrame) -> pd.DataFrame:
    """The rows training may use: decodable examples inside a class folder."""
    return manifest[manifest["decodable"] & ~manifest["ignored"]].reset_index(drop=True)
