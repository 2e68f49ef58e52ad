"""Decoding images the same way everywhere: training, evaluation and the served model.

Every image becomes an RGB uint8 array of `size x size`: EXIF rotation applied, palette,
greyscale, CMYK and 16-bit images converted, the first frame of an animation taken, fitted to
the square by the resize policy (`fit`). A JPEG much larger than the target is decoded at 1/2,
1/4 or 1/8 scale (libjpeg's DCT scaling, PIL's draft mode), never below the target size: a
3000x2000 photo for a 224-px model decodes 64x fewer pixels.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Files that operating systems drop into folders; recorded in the manifest and skipped.
SYSTEM_FILES = {".ds_store", "thumbs.db", "desktop.ini", "__macosx"}
# How an image of another shape becomes a square: stretched (squash), its centre square
# (crop), or the whole image with black borders (pad).
RESIZE_POLICIES = ("squash", "crop", "pad")


class ImageError(ValueError):
    """Bytes that are not an image this project can use; the message says why."""


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


def fit(image: Image.Image, size: int, resize: str = "squash") -> Image.Image:
    """`image` as `size` x `size` by the resize policy (RESIZE_POLICIES), bilinear."""
    if resize == "crop":
        return ImageOps.fit(image, (size, size), Image.Resampling.BILINEAR)
    if resize == "pad":
        return ImageOps.pad(image, (size, size), Image.Resampling.BILINEAR, color=(0, 0, 0))
    if resize != "squash":
        raise ValueError(f"resize policy {resize!r}: choose one of {', '.join(RESIZE_POLICIES)}")
    return image.resize((size, size), Image.Resampling.BILINEAR)


def decode(data: bytes, size: int, max_pixels: int = 40_000_000, resize: str = "squash") -> np.ndarray:
    """Bytes of an image file -> (size, size, 3) uint8. Raises ImageError with the reason
    (not an image, too many pixels, corrupt) and nothing else."""
    if not data:
        raise ImageError("empty image data (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > max_pixels:
                    raise ImageError(
                        f"{image.width}x{image.height} pixels is over the limit of {max_pixels} "
                        "(possible decompression bomb)"
                    )
                image.seek(0)
                if image.format == "JPEG":
                    image.draft(None, (size, size))  # a no-op unless both sides stay >= size
                return np.asarray(fit(to_rgb(image), size, resize), dtype=np.uint8)
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError("not an image PIL can identify") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError) as exc:
        raise ImageError(f"cannot decode: {exc}") from None
