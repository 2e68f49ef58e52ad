"""Decoding images the same way everywhere: training, evaluation and the served model.

Every image becomes an RGB uint8 array of `size x size`: EXIF rotation applied, palette,
greyscale, CMYK and 16-bit images converted, the first frame of an animation taken, fitted to
the square by the resize policy (`fit`). A JPEG much larger than the target is decoded at 1/2,
1/4 or 1/8 scale (libjpeg's DCT scaling, PIL's draft mode), never below the target size: a
3000x2000 photo for a 224-px model decodes 64x fewer pixels.

`inspect` also names, per file, whether TensorFlow's own C++ decoder gives the same pixels
(`decoder`: "jpeg" or "png"; `native_decoder`): training streams decode those inside the
`tf.data` graph (`tasks.modality.pixels`), everything else through `decode`.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageOps

# How an image of another shape becomes a square: stretched (squash), its centre square
# (crop), or the whole image with black borders (pad).
RESIZE_POLICIES = ("squash", "crop", "pad")


class ImageError(ValueError):
    """Bytes that are not an image this project can use; the message says why."""


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


EXIF_ORIENTATION = 0x0112


def native_decoder(image: Image.Image, data: bytes) -> str | None:
    """ "jpeg" or "png" where TensorFlow's `decode_jpeg` (at `decode`'s draft scale) / `decode_png`
    give the pixels `to_rgb` gives (within a grey level after the resize:
    bench/results/decode_parity.md); None where only `decode` does: EXIF rotation, CMYK,
    palette, alpha or transparency, 16-bit or 1-bit, animation, any other format. `image` is
    loaded (a PNG's EXIF may follow its pixels)."""
    if getattr(image, "n_frames", 1) != 1 or image.mode not in ("RGB", "L") or "transparency" in image.info:
        return None
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        return None
    if image.format == "JPEG":
        return "jpeg"
    # PNG header: signature, IHDR's length and name, width, height, then bit depth and colour
    # type (0 grey, 2 RGB); PIL opens a 16-bit RGB PNG as "RGB" too
    if image.format == "PNG" and data[12:16] == b"IHDR" and data[24] == 8 and data[25] in (0, 2):
        return "png"
    return None


def inspect(data: bytes, max_pixels: int) -> dict[str, object]:
    """One file's bytes -> its format, mode, size and frames, `decodable`, `decoder`
    (`native_decoder`), and `error` when it is not an image this project can use (fully decoded
    once: a truncated file fails here)."""
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
                        f"{image.width}x{image.height} pixels exceeds images.max_pixels="
                        f"{max_pixels} (possible decompression bomb)"
                    )
                    return out
                if image.format == "JPEG":
                    # libjpeg still reads and entropy-decodes every block (a truncated or corrupt
                    # file fails the same way); only the inverse DCT runs at 1/8 scale
                    image.draft(None, (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
                out["decoder"] = native_decoder(image, data)
        out["decodable"] = True
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        out["error"] = f"decompression bomb: {exc}"
    except Image.UnidentifiedImageError:
        out["error"] = "not an image PIL can identify"
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated/corrupt data
        out["error"] = f"cannot decode: {exc}"
    return out


MAX_IMAGE_BYTES = 32 * 1024 * 1024  # per row, decoded


def image_bytes(value: Any) -> bytes:
    """Raw bytes, or base64 text of them, -> the image file's bytes. Raises ImageError."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, str):
        if len(value) > MAX_IMAGE_BYTES * 4 // 3 + 4:
            raise ImageError(f"image is over {MAX_IMAGE_BYTES // (1024 * 1024)} MiB")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ImageError(
                "not base64-encoded image bytes (the model takes image bytes, never file paths)"
            ) from None
    else:
        raise ImageError(f"expected base64 text or bytes, got {type(value).__name__}")
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"image is over {MAX_IMAGE_BYTES // (1024 * 1024)} MiB")
    return data


def row_reader(meta: dict[str, Any]) -> Callable[[Any], np.ndarray]:
    """How a served model reads one row (`image`: base64 text or bytes of an image file) with
    the settings its version recorded (`Pixels.meta`); the reader raises ImageError. Versions
    logged before resize policies squash, before a pixel limit take the default one."""
    size, resize = int(meta["image_size"]), str(meta.get("resize", "squash"))
    max_pixels = int(meta.get("max_pixels", 40_000_000))

    def read(value: Any) -> np.ndarray:
        return decode(image_bytes(value), size, max_pixels, resize)

    return read
