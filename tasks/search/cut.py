"""`top-n` trials on cached activations: a trial that trains only a backbone's top n weighted
layers leaves every layer below them frozen and in inference mode, so what those layers give
an image never changes. Without augmentation (the same images every epoch) that output, the
activations at the cut below the top n layers, is computed once for the train and val splits
(memory-mapped in the search's folder, a batch read at a time), and the trial trains the top n
layers and the head on it: an epoch costs the top layers' passes, not the whole backbone's.

The cut is the input of the lowest of the top n layers. A backbone whose layers above the cut
need another tensor from below it (a residual connection across the cut) cannot be cut there,
and its trial trains on images as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tasks.core.config import FinetuneParams
from tasks.data.datasets import Split
from tasks.modality import Encoding
from tasks.models.backbones import weighted_layers
from tasks.models.features import FEATURES_DIR, features, key
from tasks.models.trainer import Trainer


@dataclass
class Cut:
    """A backbone in two: `bottom` (images -> flattened activations at the cut) and `top`
    (those activations -> the backbone's output), sharing the backbone's layers."""

    bottom: keras.Model
    top: keras.Model
    depth: int  # the top n layers above the cut
    layer: str  # the lowest of them: the cut is its input
    backbone: keras.Model


def cut(backbone: keras.Model, n: int) -> Cut | None:
    """`backbone` cut below its top `n` layers with weights (BatchNorm excluded, as `top`
    trials count them); None where it cannot be cut there."""
    weighted = weighted_layers(backbone)
    if not 0 < n <= len(weighted):
        return None
    tensor = weighted[-n].input
    if not isinstance(tensor, keras.KerasTensor):  # a layer of several inputs
        return None
    try:
        above = keras.Model(tensor, backbone.output)
    except ValueError:  # "not connected to inputs": a tensor from below the cut is needed
        return None
    shape = tuple(int(d) for d in tensor.shape[1:])
    flat = keras.Input((int(np.prod(shape)),), name="activations")
    top = keras.Model(flat, above(keras.layers.Reshape(shape)(flat), training=False), name="top")
    bottom = keras.Model(backbone.input, keras.layers.Flatten()(tensor), name="bottom")
    return Cut(bottom, top, n, weighted[-n].name, backbone)


def activations(
    cuts: list[Cut], name: str, splits: tuple[Split, Split], encoding: Encoding, folder: Path
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Each cut's train and val activations (by depth), memory-mapped from `folder`: the
    deepest cut's from the images (one frozen pass of the backbone), each other one's from the
    one below it, where only the layers between the two run."""
    found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    below: Cut | None = None
    for where in sorted(cuts, key=lambda c: -c.depth):
        if where.depth in found:
            continue
        derived = []
        for split, what, i in zip(splits, ("train", "val"), (0, 1), strict=True):
            path = folder / FEATURES_DIR / f"{key(f'{name}-cut-{where.depth}', split, encoding)}.npy"
            rows = None if below is None else _from_below(where, below, found[below.depth][i], path)
            if rows is None:
                rows = features(
                    where.bottom,
                    f"{name}-cut-{where.depth}",
                    split,
                    encoding,
                    folder,
                    f"{what} below top-{where.depth}",
                )
            derived.append(rows)
        found[where.depth] = (derived[0], derived[1])
        below = where
    return found


def _from_below(where: Cut, below: Cut, rows: np.ndarray, path: Path) -> np.ndarray | None:
    """`where`'s activations from those at `below`, a cut further down a copy of the same
    backbone (the layers between are frozen and pretrained in both), 256 rows at a time;
    None when those layers need a tensor from below `below`'s cut."""
    if path.is_file():
        return None  # computed before (a resumed search): `features` finds it
    start = where.backbone.get_layer(below.layer).input
    shape = tuple(int(d) for d in start.shape[1:])
    try:
        between = keras.Model(start, keras.layers.Flatten()(where.backbone.get_layer(where.layer).input))
    except ValueError:
        return None
    flat = keras.Input((int(np.prod(shape)),))
    middle = keras.Model(flat, between(keras.layers.Reshape(shape)(flat), training=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}")
    out = np.lib.format.open_memmap(
        partial, mode="w+", dtype="float32", shape=(len(rows), middle.output_shape[-1])
    )
    for i in range(0, len(rows), 256):
        out[i : i + 256] = np.asarray(middle(np.asarray(rows[i : i + 256], "float32"), training=False))
    out.flush()
    del out
    partial.replace(path)  # whole or not at all: a killed search computes it again
    return np.load(path, mmap_mode="r")


def trainer_on_cut(full: Trainer, where: Cut, values: dict[str, Any], finetune: FinetuneParams) -> Trainer:
    """A trainer of `full`'s classifier on activations at the cut: the cut's top (the same
    layer objects as `full`'s backbone) and `full`'s head, so training it trains `full`'s
    classifier; no augmentation (the activations are of the images as they are)."""
    inputs = keras.Input(where.top.input_shape[1:], name="activations")
    x = where.top(inputs)
    x = keras.layers.Dropout(finetune.dropout, seed=finetune.seed + 2)(x)
    small = keras.Model(inputs, full.classifier.get_layer("head")(x), name="classifier_on_cut")
    rate = values["learning_rate"]
    return Trainer(small, where.top, rate, rate * values.get("backbone_rate_factor", 1.0))
