"""Ingest: an image folder -> a manifest with one row per entry.

The folder layout is the one `keras.utils.image_dataset_from_directory` reads:
`<root>/<class>/<image>`. Every file is hashed and fully decoded once, so later stages can
trust the `decodable` column and the `error` column says why a file cannot be used.

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
Every error row blocks validation, so the run stops and names each entry.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image

from tasks.core import progress
from tasks.data.images import is_ignored, printable


def utf8(name: str) -> bool:
    """False for a name holding bytes that are not UTF-8 (Python keeps them as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


MANIFEST_COLUMNS = [
    "path",  # relative to the data root, POSIX separators
    "label",  # the class folder; None for a file outside any class folder
    "sha256",
    "md5",  # what DVC hashes with; lets the manifest reproduce DVC's directory hash
    "size",  # bytes
    "format",
    "mode",
    "width",
    "height",
    "n_frames",
    "ignored",  # hidden/system file, skipped by design
    "decodable",
    "error",  # why the entry cannot be used; None when it can
]

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


def read_inside(root: Path, rel: str, parts: tuple[Path, ...] = ()) -> bytes:
    """The bytes of `rel` under `root`, only if it is (or links to) a regular file inside it.
    With `parts` (a split joined from folders under `root`), inside the part `rel` names."""
    if not parts:
        return open_regular(resolve_inside(root, rel))
    path = root / rel
    for part in parts:
        if path.is_relative_to(part):  # by name; resolve_inside then follows links and `..`
            return open_regular(resolve_inside(part, path.relative_to(part).as_posix()))
    raise UnsafePathError(f"{rel}: outside the folders of its split")


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


def _row(entry: Entry, max_pixels: int, anywhere: bool = False) -> dict[str, object]:
    parts = entry.rel.rstrip("/").split("/")  # a skipped folder is named with a trailing /
    row: dict[str, object] = {
        "path": entry.rel,
        "label": parts[0] if len(parts) == 2 else None,
        "sha256": None,
        "md5": None,
        "size": None,
        "format": None,
        "mode": None,
        "width": None,
        "height": None,
        "n_frames": None,
        "ignored": is_ignored(Path(entry.rel)),
        "decodable": False,
        "error": entry.error,
    }
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
        row["error"] = "not directly inside a class folder (<root>/<class>/<image>)"
        return row
    if not data:
        row["error"] = "empty file (0 bytes)"
        return row
    row.update(_inspect_image(data, max_pixels))
    return row


def _inspect_image(data: bytes, max_pixels: int) -> dict[str, object]:
    out: dict[str, object] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                out.update(
                    format=image.format,
                    mode=image.mode,
                    width=image.width,
                    height=image.height,
                    n_frames=getattr(image, "n_frames", 1),
                )
                if image.width * image.height > max_pixels:
                    out["error"] = (
                        f"{image.width}x{image.height} pixels exceeds validate.max_pixels="
                        f"{max_pixels} (possible decompression bomb)"
                    )
                    return out
                if image.format == "JPEG":
                    # libjpeg still reads and entropy-decodes every block (a truncated or corrupt
                    # file fails the same way); only the inverse DCT runs at 1/8 scale
                    image.draft(None, (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
        out["decodable"] = True
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        out["error"] = f"decompression bomb: {exc}"
    except Image.UnidentifiedImageError:
        out["error"] = "not an image PIL can identify"
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated/corrupt data
        out["error"] = f"cannot decode: {exc}"
    return out


def scan(
    root: Path | str, max_pixels: int = 40_000_000, workers: int = 4, anywhere: bool = False
) -> pd.DataFrame:
    """List, hash and decode every entry under `root`; one manifest row per entry. `anywhere`:
    an image at any depth is usable (unlabelled images), not only inside a class folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data folder not found")
    entries = walk(root)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = list(
            progress.bar(
                pool.map(lambda e: _row(e, max_pixels, anywhere), entries), f"ingest {root.name}", len(entries)
            )
        )
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for col in ("width", "height", "n_frames", "size"):
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
    """The rows training may use: decodable images inside a class folder."""
    return manifest[manifest["decodable"] & ~manifest["ignored"]].reset_index(drop=True)
