"""Ingest: an image folder -> a manifest with one row per file.

The folder layout is the one `keras.utils.image_dataset_from_directory` reads:
`<root>/<class>/<image>`. Every file is hashed and fully decoded once, so later stages can
trust the `decodable` column and the `error` column says why a file cannot be used.
"""

from __future__ import annotations

import hashlib
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from PIL import Image

from tasks.images import is_ignored

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
    "error",  # why the file cannot be used; None when it can
]


def _inspect(root: Path, path: Path, max_pixels: int) -> dict[str, object]:
    rel = path.relative_to(root).as_posix()
    parts = rel.split("/")
    data = path.read_bytes()
    row: dict[str, object] = {
        "path": rel,
        "label": parts[0] if len(parts) == 2 else None,
        "sha256": hashlib.sha256(data).hexdigest(),
        "md5": hashlib.md5(data, usedforsecurity=False).hexdigest(),
        "size": len(data),
        "format": None,
        "mode": None,
        "width": None,
        "height": None,
        "n_frames": None,
        "ignored": is_ignored(path),
        "decodable": False,
        "error": None,
    }
    if row["ignored"]:
        return row
    if len(parts) != 2:
        row["error"] = "not directly inside a class folder (<root>/<class>/<image>)"
        return row
    if not data:
        row["error"] = "empty file (0 bytes)"
        return row
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                row.update(
                    format=image.format,
                    mode=image.mode,
                    width=image.width,
                    height=image.height,
                    n_frames=getattr(image, "n_frames", 1),
                )
                if image.width * image.height > max_pixels:
                    row["error"] = (
                        f"{image.width}x{image.height} pixels exceeds validate.max_pixels="
                        f"{max_pixels} (possible decompression bomb)"
                    )
                    return row
                image.load()
        row["decodable"] = True
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        row["error"] = f"decompression bomb: {exc}"
    except Image.UnidentifiedImageError:
        row["error"] = "not an image PIL can identify"
    except (OSError, SyntaxError, ValueError) as exc:  # truncated/corrupt data
        row["error"] = f"cannot decode: {exc}"
    return row


def scan(root: Path | str, max_pixels: int = 40_000_000, workers: int = 4) -> pd.DataFrame:
    """List, hash and decode every file under `root`; one manifest row per file."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data folder not found")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = list(pool.map(lambda p: _inspect(root, p, max_pixels), files))
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for col in ("width", "height", "n_frames", "size"):
        manifest[col] = manifest[col].astype("Int64")
    manifest["decodable"] = manifest["decodable"].astype(bool)
    manifest["ignored"] = manifest["ignored"].astype(bool)
    return manifest


def class_folders(root: Path | str) -> list[str]:
    """Class folder names, including empty ones (which the manifest cannot show)."""
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir() and not is_ignored(p))


def usable(manifest: pd.DataFrame) -> pd.DataFrame:
    """The rows training may use: decodable images inside a class folder."""
    return manifest[manifest["decodable"] & ~manifest["ignored"]].reset_index(drop=True)
