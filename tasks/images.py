"""Decoding images the same way everywhere: training, evaluation and the served model.

Every image becomes an RGB uint8 array of `size x size`: EXIF rotation applied, palette,
greyscale, CMYK and 16-bit images converted, the first frame of an animation taken.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Files that operating systems drop into folders; recorded in the manifest and skipped.
SYSTEM_FILES = {".ds_store", "thumbs.db", "desktop.ini"}


def is_ignored(path: Path) -> bool:
    """Hidden and OS bookkeeping files are not images of the dataset."""
    return path.name.startswith(".") or path.name.lower() in SYSTEM_FILES


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, applying EXIF orientation first."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale the actual range down to 8 bits instead of clipping.
        array = np.asarray(image, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        scaled = (array - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(array)
        image = Image.fromarray(scaled.astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def decode(data: bytes, size: int) -> np.ndarray:
    """Bytes of an image file -> (size, size, 3) uint8."""
    with Image.open(io.BytesIO(data)) as image:
        image.seek(0)
        rgb = to_rgb(image)
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)


def load_images(paths: list[str] | list[Path], size: int) -> np.ndarray:
    """Decode files into one (n, size, size, 3) uint8 array."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = decode(Path(path).read_bytes(), size)
    return out
