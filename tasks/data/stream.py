"""Pixels as a stream: a split's files read, decoded and batched by a `tf.data` pipeline, so no
stage ever holds a split's images (or their bytes) in memory at once.

Each file goes through the one decoding function (`images.decode`: EXIF rotation, CMYK,
16-bit, palette, first frame, the pixel limit, JPEG draft mode, the resize policy), the same
function the served model runs, on `tf.data`'s parallel map (PIL releases the GIL while it
decodes and resizes, so the threads use every core). Batches are uint8, as the models take
them: preprocessing lives inside each model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tasks.core import runner
from tasks.data import ingest
from tasks.data.images import RESIZE_POLICIES, decode

if TYPE_CHECKING:  # TensorFlow is imported where a stream is built, not by `transferops status`
    import tensorflow as tf


CACHE_BYTES = 256 * 2**20  # decoded pixels a stream may keep between epochs


@dataclass(frozen=True)
class Pixels:
    """How a file becomes a model's input: a `size` x `size` RGB uint8 array, fitted by the
    `resize` policy (squash, crop or pad), refused above `max_pixels`."""

    size: int
    resize: str = "squash"
    max_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize policy {self.resize!r}: choose one of {', '.join(RESIZE_POLICIES)}")

    def key(self) -> str:
        """What decides the decoded pixels, for cache keys: `224-squash`."""
        return f"{self.size}-{self.resize}"

    @property
    def fingerprint(self) -> str:
        """As a stage input (flows.stages.caching): everything that decides the pixels."""
        return f"{self.key()}-{self.max_pixels}"


def decode_file(root: Path, relative: str, pixels: Pixels, parts: tuple[Path, ...] = ()) -> np.ndarray:
    """One file under `root` (never outside it, nor outside its part of a joined split:
    `ingest.read_inside`) as model input."""
    data = ingest.read_inside(root, relative, parts)
    return decode(data, pixels.size, pixels.max_pixels, pixels.resize)


def decode_files(root: Path, files: Sequence[str], pixels: Pixels, parts: tuple[Path, ...] = ()) -> np.ndarray:
    """A few files as one (n, size, size, 3) array: thumbnails, a served batch, a test."""
    out = np.empty((len(files), pixels.size, pixels.size, 3), dtype=np.uint8)
    for i, relative in enumerate(files):
        out[i] = decode_file(root, relative, pixels, parts)
    return out


def batches(
    root: Path,
    files: Sequence[str],
    pixels: Pixels,
    batch_size: int,
    labels: np.ndarray | None = None,
    shuffle_seed: int | None = None,
    cache_bytes: int = CACHE_BYTES,
    parts: tuple[Path, ...] = (),
) -> tf.data.Dataset:
    """A `tf.data` pipeline over `files` (relative to `root`; `parts`: see `decode_file`):
    decoded in parallel, in order (or reshuffled every epoch with `shuffle_seed`), batched,
    prefetched. Yields uint8 image batches, or (images, labels) with `labels`. Decoded pixels
    are kept between epochs when the whole split fits `cache_bytes`."""
    import tensorflow as tf

    files = list(files)
    root = Path(root)

    def load(index: np.ndarray) -> np.ndarray:
        return decode_file(root, files[int(index)], pixels, parts)

    # Plain graph code: autograph would convert these (writing its generated source to the
    # temp folder, left there until the process exits) for nothing.
    @tf.autograph.experimental.do_not_convert
    def image(index: tf.Tensor) -> tf.Tensor:
        decoded = tf.numpy_function(load, [index], tf.uint8, stateful=False)
        decoded.set_shape((pixels.size, pixels.size, 3))
        return decoded

    indices = tf.data.Dataset.range(len(files))
    # A split whose decoded pixels fit cache_bytes is decoded once and kept for later epochs
    # (training on a few hundred images decodes them dozens of times otherwise); a larger one
    # is decoded again every epoch. Either way memory stays bounded, whatever the number of files.
    cached = len(files) * pixels.size * pixels.size * 3 <= cache_bytes
    if shuffle_seed is not None and not cached:
        indices = indices.shuffle(max(len(files), 1), seed=shuffle_seed, reshuffle_each_iteration=True)
    if labels is None:
        stream = indices.map(image, num_parallel_calls=runner.threads(), deterministic=True)
    else:
        y = label_tensor(labels)

        @tf.autograph.experimental.do_not_convert
        def labelled(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return image(index), tf.gather(y, index)

        stream = indices.map(labelled, num_parallel_calls=runner.threads(), deterministic=True)
    if cached:
        stream = stream.cache()
        if shuffle_seed is not None:  # the same order as shuffling the indices with this seed
            stream = stream.shuffle(max(len(files), 1), seed=shuffle_seed, reshuffle_each_iteration=True)
    return stream.batch(batch_size).prefetch(2).with_options(options())


def label_tensor(labels: np.ndarray) -> tf.Tensor:
    """Labels as a tensor to gather batches from: class indices (int64), or float rows of
    targets (tasks.models.distill: the label, then a teacher's log-probabilities)."""
    import tensorflow as tf

    labels = np.asarray(labels)
    return tf.constant(labels.astype("float32") if labels.dtype.kind == "f" else labels.astype(np.int64))


def options() -> tf.data.Options:
    """Our pipelines' options: this process's share of the cores (a Dask worker's), and no
    autotuning. The autotuner's thread wakes at doubling intervals (10 ms, 20 ms, ... 5.12 s)
    and a pass over a `numpy_function` map could wait for its next wake-up at the end of the
    data: 384 images at 224 px took 10.23 s instead of 5.3 s in about half the runs (and 2000
    took 81.9 s, the wake-up after 40.9 s). Fixed parallelism (one decode per core) and two
    batches of prefetch do as well without it."""
    import tensorflow as tf

    chosen = tf.data.Options()
    chosen.threading.private_threadpool_size = runner.threads()
    chosen.autotune.enabled = False
    return chosen
