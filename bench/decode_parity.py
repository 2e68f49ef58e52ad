"""Decode parity: would TensorFlow's C++ decoders give the pixels transferops' PIL path gives?

The groundwork for decoding ordinary JPEG/PNG inside the `tf.data` graph (issue 42, part 2):
for photos of the scale benchmark (640x480 JPEG and PNG, RGB), each decoded by
`tasks.modality.images.decode` (PIL: draft mode, then a bilinear resize with PIL's reducing
support) and by TensorFlow (`tf.io.decode_jpeg` at the same DCT ratio, or `decode_png`, then
`tf.image.resize(bilinear, antialias=True)`, rounded), at each target size: the share of pixel
values within 1 grey level, the largest difference, and the same with TensorFlow's default
JPEG DCT method (INTEGER_FAST) instead of libjpeg's accurate one (PIL's).

Results: bench/results/decode_parity.{json,md}. One command: `python -m bench.decode_parity`.
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench import results_io
from bench.scale import make_photo

RESULTS = Path(__file__).parent / "results"


def tf_decode(data: bytes, size: int, dct_method: str) -> np.ndarray | None:
    """TensorFlow's decode + squash resize of one file; None where PIL's path must stay."""
    import tensorflow as tf
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        width, height, fmt, mode = image.width, image.height, image.format, image.mode
    if mode not in ("RGB", "L") or fmt not in ("JPEG", "PNG"):
        return None
    if fmt == "JPEG":
        ratio = 1  # PIL's draft: the largest 1/2^k scale that keeps both sides >= size
        while ratio < 8 and width // (2 * ratio) >= size and height // (2 * ratio) >= size:
            ratio *= 2
        pixels = tf.io.decode_jpeg(data, channels=3, ratio=ratio, dct_method=dct_method)
    else:
        pixels = tf.io.decode_png(data, channels=3)
    resized = tf.image.resize(tf.cast(pixels, tf.float32), (size, size), "bilinear", antialias=True)
    return np.asarray(tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8))


def measure(files: list[Path], size: int, dct_method: str) -> dict[str, Any]:
    from tasks.modality.images import decode

    diffs = []
    for path in files:
        data = path.read_bytes()
        theirs = tf_decode(data, size, dct_method)
        if theirs is not None:
            ours = decode(data, size, 40_000_000, "squash")
            diffs.append(np.abs(theirs.astype(np.int16) - ours.astype(np.int16)).ravel())
    d = np.concatenate(diffs)
    return {
        "files": len(diffs),
        "values": int(d.size),
        "within_1": round(float((d <= 1).mean()), 6),
        "equal": round(float((d == 0).mean()), 6),
        "max": int(d.max()),
        "mean": round(float(d.mean()), 4),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=60)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="transferops-decode-") as tmp:
        files: list[Path] = []
        for seed in range(args.photos):
            make_photo((Path(tmp) / f"photo-{seed}", 1, seed))
            files += sorted(Path(tmp).glob(f"photo-{seed}.*"))
        kinds = sorted({p.suffix for p in files})
        report: dict[str, Any] = {**results_io.header("bench.decode_parity", argv), "kinds": kinds}
        report["sizes"] = {
            str(size): {dct: measure(files, size, dct) for dct in ("INTEGER_ACCURATE", "INTEGER_FAST")}
            for size in args.sizes
        }
    lines = [
        f"# Decode parity ({report['date']})",
        "",
        f"`{report['command']}` on {report['machine']}. The scale benchmark's photos ({', '.join(kinds)}; "
        "those TensorFlow decodes: RGB or grey JPEG/PNG): transferops' PIL decode against "
        "`tf.io.decode_jpeg`/`decode_png` + `tf.image.resize(bilinear, antialias=True)`, squash policy.",
        "",
        "| size | JPEG DCT in TensorFlow | files | pixel values | equal | within 1 grey level | max diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, found in report["sizes"].items():
        for dct, r in found.items():
            lines.append(
                f"| {size} | {dct} | {r['files']} | {r['values']:,} | {r['equal']:.2%} "
                f"| {r['within_1']:.3%} | {r['max']} |"
            )
    return results_io.write(args.out, "decode_parity", report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
