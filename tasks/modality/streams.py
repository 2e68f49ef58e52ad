"""What every modality's input stream shares: how labels ride along, and the `tf.data` options."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tasks.core import runner

if TYPE_CHECKING:  # TensorFlow is imported where a stream is built, not by `transferops status`
    import tensorflow as tf


CACHE_BYTES = 256 * 2**20  # decoded input a stream may keep between epochs


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
