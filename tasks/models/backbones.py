"""Backbones and classifiers: building them (no data needed) and loading candidates.

A backbone maps (size, size, 3) uint8-range RGB images to a feature vector and carries its
own preprocessing, so every model in the project takes raw pixels. A classifier is
`input -> backbone (inference mode) -> dropout -> dense softmax "head"`.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tasks.core import progress
from tasks.core.config import Candidate
from tasks.core.errors import UserError

# Keras Applications whose preprocessing is inside the model (they take 0..255 pixels).
_IN_MODEL_PREPROCESSING = ("MobileNetV3", "EfficientNet", "ConvNeXt")


# Every random initial value and dropout mask comes from an explicit seed. Keras' default
# (seed=None) draws one from Python's global `random` when a layer is built, which other threads
# of the process (Prefect's, MLflow's) also draw from: runs would differ by thread timing.


def glorot(seed: int) -> keras.initializers.Initializer:
    return keras.initializers.GlorotUniform(seed=seed)


def build_backbone(size: int, width: int = 32, name: str = "backbone", seed: int = 0) -> keras.Model:
    """A small CNN on `size` x `size` RGB images: three conv blocks (width, 2*width, 4*width
    filters) and global pooling."""
    inputs = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    for i, filters in enumerate((width, 2 * width, 4 * width)):
        for j in range(2):
            x = keras.layers.Conv2D(
                filters,
                3,
                padding="same",
                use_bias=False,
                kernel_initializer=glorot(seed * 100 + 2 * i + j),
                name=f"conv{i}_{j}",
            )(x)
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}_{j}")(x)
            x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(inputs, outputs, name=name)


def build_head(
    feature_dim: int, num_classes: int, dropout: float, seed: int = 0
) -> tuple[keras.Model, keras.layers.Layer]:
    """The classification head alone, trained on cached features; returns (model, dense layer)."""
    dense = keras.layers.Dense(
        num_classes, activation="softmax", kernel_initializer=glorot(seed), name="head"
    )
    inputs = keras.Input((feature_dim,), name="features")
    outputs = dense(keras.layers.Dropout(dropout, seed=seed + 1)(inputs))
    return keras.Model(inputs, outputs, name="head_model"), dense


def input_like(model: keras.Model) -> Any:
    """A new input taking what `model` takes: its shape and dtype (pixels, token ids)."""
    return keras.Input(model.input_shape[1:], dtype=model.inputs[0].dtype, name="input")


def build_classifier(
    backbone: keras.Model, dense: keras.layers.Layer, dropout: float, seed: int = 0
) -> keras.Model:
    """Backbone + head. The backbone is always called with training=False, so its BatchNorm
    layers stay in inference mode even when unfrozen (Keras' fine-tuning guide)."""
    inputs = input_like(backbone)
    x = backbone(inputs, training=False)
    x = keras.layers.Dropout(dropout, seed=seed + 2)(x)
    return keras.Model(inputs, dense(x), name="classifier")


def weighted_layers(backbone: keras.Model) -> list[keras.layers.Layer]:
    """The layers a fine-tune can unfreeze, bottom to top: those with weights, BatchNorm
    excluded (it stays frozen, in inference mode: Keras' fine-tuning guide). `top-n` trains the
    last n of them."""
    return [
        layer
        for layer in backbone.layers
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    ]


def single(classifier: keras.Model) -> keras.Model:
    """The classifier itself, or for an ensemble of whole members (tasks/search/ensemble.py) its
    best member, `member_0`. An ensemble of backbones and heads answers for its best member
    itself: its first backbone and its layer `head` are that member's."""
    names = [layer.name for layer in classifier.layers]
    return classifier.get_layer("member_0") if "member_0" in names else classifier


def backbone_of(classifier: keras.Model) -> keras.Model:
    """The nested backbone model inside a classifier (of an ensemble: its best member's)."""
    for layer in single(classifier).layers:
        if isinstance(layer, keras.Model):
            return layer
    raise ValueError(f"classifier {classifier.name!r} has no nested backbone model")


def reseed(model: keras.Model, seed: int) -> keras.Model:
    """Draw every kernel again from its own initializer with an explicit seed (for a model built
    with seed=None initializers, such as a Keras Application without weights)."""
    for k, layer in enumerate(model.layers):
        variable = getattr(layer, "kernel", None)  # DepthwiseConv2D keeps its kernel there too
        initializer = getattr(layer, "kernel_initializer", None) or getattr(
            layer, "depthwise_initializer", None
        )
        if variable is None or initializer is None:
            continue
        config = {**initializer.get_config(), "seed": seed * 10_000 + k}
        variable.assign(type(initializer).from_config(config)(variable.shape, variable.dtype))
    return model


def check_application(candidate: Candidate) -> None:
    """A keras: candidate names a Keras Application that preprocesses in the model, and its
    weights file exists; UserError otherwise (checked before a run starts, nothing loaded)."""
    ref = candidate.uri.partition(":")[2]
    known = callable(getattr(keras.applications, ref, None))
    if not known or not ref.startswith(_IN_MODEL_PREPROCESSING):
        raise UserError(
            f"images.candidates: {candidate.uri} is not a keras.applications model with in-model "
            f"preprocessing ({', '.join(f'{p}*' for p in _IN_MODEL_PREPROCESSING)}); fix the name"
        )
    weights = candidate.weights
    if weights not in (None, "none", "imagenet") and not Path(str(weights)).is_file():
        raise UserError(f"images.candidates: {candidate.uri}: weights file {weights} not found")


def keras_application(name: str, size: int, weights: str | None, seed: int = 0) -> keras.Model:
    """A Keras Application without its top, average-pooled. `weights`: imagenet, none, or a file."""
    if not name.startswith(_IN_MODEL_PREPROCESSING):
        raise ValueError(
            f"keras:{name}: only Applications with in-model preprocessing are supported "
            f"({', '.join(f'{p}*' for p in _IN_MODEL_PREPROCESSING)})"
        )
    try:
        factory = getattr(keras.applications, name)
    except AttributeError:
        raise ValueError(f"keras:{name}: no such keras.applications model") from None
    file_weights = weights not in (None, "none", "imagenet")
    if file_weights and not Path(str(weights)).is_file():
        raise FileNotFoundError(f"keras:{name}: weights file {weights} not found")
    model = factory(
        input_shape=(size, size, 3),
        include_top=False,
        weights="imagenet" if weights == "imagenet" else None,
        pooling="avg",
    )
    if file_weights:
        model.load_weights(str(weights))
    elif weights in (None, "none"):
        reseed(model, seed)
    return model


KERAS_SIZE = 224  # the input side of a keras: candidate that names none (what ImageNet weights expect)


EAGER_IMAGES = 512  # a split of at most this many images skips tracing a predict function,
EAGER_VALUES = 64 * 64 * 3  # of inputs up to 64x64 RGB: Lite0 at 224 px called eagerly held
# 3.2 GB more peak memory on 40 images, 4.8 GB on 320 (and ran slower: 6.0 s against 4.5),
# where its predict function held 0.35 GB (AMD EPYC, 2 cores); at 32 px eager saves ~0.3 s


def drop_pages(array: Any) -> None:
    """Unmap a memory-mapped array's pages from this process (madvise MADV_DONTNEED): they stay
    in the OS page cache (written back when dirty) and a later read maps them again, but the
    process's resident memory no longer grows with the file's size (every page of a file read
    or written through the map would otherwise count in it until the map is closed). A plain
    array is left as it is."""
    mapping = getattr(array, "_mmap", None)
    if mapping is not None and not mapping.closed:
        mapping.madvise(mmap.MADV_DONTNEED)


def row_reader(x: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """`read(index)`: the rows `x[index]` (index sorted) as float32. For a whole memory-mapped
    .npy file, read with `pread` instead of through the map: a gather of rows scattered over the
    file maps far more than it reads (the kernel maps pages around a fault, and large folios
    whole: 64 random rows of a 200 MB file mapped 90 MB on Linux 6.18), and those pages would
    count in the process's resident memory until the map is closed."""
    whole_file = isinstance(x, np.memmap) and isinstance(x.base, mmap.mmap)
    if not (whole_file and x.ndim == 2 and x.flags.c_contiguous):
        return lambda index: np.asarray(x[index], dtype="float32")
    filename, start, row = x.filename, x.offset, x.shape[1] * x.itemsize

    def read(index: np.ndarray) -> np.ndarray:
        out = np.empty((len(index), x.shape[1]), x.dtype)
        buffer = memoryview(out).cast("B")
        fd = os.open(filename, os.O_RDONLY)
        try:
            for j, i in enumerate(index.tolist()):
                os.preadv(fd, [buffer[j * row : (j + 1) * row]], start + i * row)
        finally:
            os.close(fd)
        return out.astype("float32", copy=False)

    return read


class _NpyWriter:
    """A float32 `.npy` file of (total, dim) written a block of rows at a time with `pwrite`,
    never through a map: what is written sits in the OS page cache, not in this process."""

    def __init__(self, path: Path, total: int, dim: int) -> None:
        with open(path, "wb") as f:
            header = {"descr": "<f4", "fortran_order": False, "shape": (total, dim)}
            np.lib.format.write_array_header_1_0(f, header)
            self.start, self.row = f.tell(), dim * 4
            f.truncate(self.start + total * self.row)
        self.fd = os.open(path, os.O_WRONLY)

    def __setitem__(self, where: slice | np.ndarray, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype="<f4")
        if isinstance(where, slice):  # consecutive rows: one write
            os.pwrite(self.fd, values.tobytes(), self.start + where.start * self.row)
            return
        for i, value in zip(where.tolist(), values, strict=True):
            os.pwrite(self.fd, value.tobytes(), self.start + i * self.row)

    def close(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)


def extract_features(
    backbone: keras.Model,
    batches: Iterable[np.ndarray],
    total: int,
    description: str = "features",
    out: Path | None = None,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Frozen-backbone features of `total` examples given batch by batch (a `tf.data` stream of
    model input, or arrays), in inference mode, with a progress bar on a terminal. With `out`,
    written into a .npy file there (under a temporary name until complete, a batch at a time)
    and returned memory-mapped, so no more than one batch of them is ever in memory. A few
    batches of small images (`EAGER_IMAGES`, `EAGER_VALUES`) go through the backbone called as
    it is: tracing Keras' predict function costs more than they do (0.2-0.3 s a backbone on 2
    cores). Larger images never do (memory), nor do token ids: MiniLM called eagerly costs
    about 0.2 s more a batch of 32 than its compiled predict (512 articles at 128 tokens: 13.4 s
    against 10.2 s, stop 49). `rows`: where each
    example given goes (a stream in another order than the features are kept in, such as texts
    by length); in order when None."""
    dim = int(backbone.output_shape[-1])
    dims = backbone.input_shape[1:]  # token ids: (None, ...), never eager
    small = total <= EAGER_IMAGES and None not in dims and int(np.prod(dims)) <= EAGER_VALUES
    eager = small and "int" not in str(backbone.inputs[0].dtype)
    if out is None:
        features: np.ndarray | _NpyWriter = np.zeros((total, dim), dtype="float32")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(f".{out.name}.partial")
        features = _NpyWriter(partial, total, dim)
    done = 0
    try:
        with progress.counting(description, total) as advance:
            for batch in batches:
                batch = np.asarray(batch, dtype="float32")
                values = backbone(batch, training=False) if eager else backbone.predict_on_batch(batch)
                values = np.asarray(values)
                where = slice(done, done + len(values))
                features[where if rows is None else rows[where]] = values
                done += len(values)
                advance(len(values))
    finally:
        if isinstance(features, _NpyWriter):
            features.close()
    if done != total:
        raise ValueError(f"{description}: {done} examples streamed, {total} expected")
    if out is None:
        return features  # type: ignore[return-value]
    os.replace(partial, out)
    return np.load(out, mmap_mode="r")
