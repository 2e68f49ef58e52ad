"""Frozen features on disk: what a frozen backbone gives for every image of a split, computed
once per (backbone and its version, the split's files and their content, input size and
resize policy, the code that decodes and runs it: this module's import closure) and kept as
a memory-mapped .npy file under `<root>/.transferops/features/`.

Selection (LogME), the head phase of fine-tuning and reruns read them instead of decoding and
running the backbone again; a stage's cached result holds the file's path, never the array.
Safe to delete: a missing file is computed again.
"""

from __future__ import annotations

import os
import time
from functools import cache
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tasks.core import codekey
from tasks.data import lineage
from tasks.data.datasets import Split
from tasks.modality import Encoding, streams
from tasks.models.backbones import extract_features, row_reader

FEATURES_DIR = Path(".transferops") / "features"
BATCH_SIZE = 64  # images decoded and run through the backbone at once


@cache
def code_version() -> str:
    """The code that computes features (decoding, the stream, the backbones, Lite0's port):
    this module's import closure (tasks.core.codekey), once per process."""
    return codekey.code_digest((__name__,))


def key(backbone_id: str, split: Split, encoding: Encoding) -> str:
    """The cache key: which backbone (URI and version), which images (files and content), how
    they were decoded, and by which code."""
    return lineage.digest([backbone_id, split.digest(), encoding.key(), code_version()])


def features(
    backbone: keras.Model,
    backbone_id: str,
    split: Split,
    encoding: Encoding,
    root: Path | None,
    description: str = "features",
) -> np.ndarray:
    """The frozen features of `split` (memory-mapped, read-only), from the cache under `root`
    or computed now and kept there. `root=None` computes them in memory and keeps nothing."""
    if root is None:
        return _extract(backbone, split, encoding, description, None)
    path = Path(root) / FEATURES_DIR / f"{key(backbone_id, split, encoding)}.npy"
    if path.is_file():
        found = np.load(path, mmap_mode="r")
        if found.shape == (len(split), backbone.output_shape[-1]):
            os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns))  # used now: gc keeps it
            return found
    return _extract(backbone, split, encoding, description, path)


def _extract(
    backbone: keras.Model, split: Split, encoding: Encoding, description: str, out: Path | None
) -> np.ndarray:
    """The pass itself, in the order the encoding asks for (texts: by length), stored in the
    split's order."""
    source, order = split.in_run_order(encoding)
    batches = source.batches(encoding, BATCH_SIZE, labels=False).as_numpy_iterator()
    return extract_features(backbone, batches, len(split), description, out=out, rows=order)


def row_batches(x: np.ndarray, y: np.ndarray, batch: int, seed: int | None) -> Any:
    """A `tf.data` pipeline of (rows of `x`, labels) batches gathered by index from `x` (a
    memmap of the cache: only a batch is read at a time, whatever the number of images).
    `y`: class indices, or float rows of targets (tasks.models.distill). With a `seed`:
    endless, reshuffled every epoch (fit with `steps_per_epoch`); without: one pass in order
    (validation)."""
    import tensorflow as tf

    labels = streams.label_tensor(y)
    read = row_reader(x)  # a memmap's rows by pread: its pages never count in resident memory

    def take(index: np.ndarray) -> np.ndarray:
        return read(np.sort(index))

    @tf.autograph.experimental.do_not_convert
    def rows(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        taken = tf.numpy_function(take, [index], tf.float32, stateful=False)
        taken.set_shape((None, x.shape[1]))
        return taken, tf.gather(labels, tf.sort(index))

    indices = tf.data.Dataset.range(len(x))
    if seed is None:
        return indices.batch(batch).map(rows).prefetch(2).with_options(streams.options())
    return (
        indices.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(batch)
        .map(rows)
        .prefetch(2)
        .repeat()
        .with_options(streams.options())
    )
