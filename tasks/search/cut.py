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
from tasks.data.stream import Pixels
from tasks.models.features import features
from tasks.models.trainer import Trainer


@dataclass
class Cut:
    """A backbone in two: `bottom` (images -> flattened activations at the cut) and `top`
    (those activations -> the backbone's output), sharing the backbone's layers."""

    bottom: keras.Model
    top: keras.Model
    depth: int  # the top n layers above the cut


def cut(backbone: keras.Model, n: int) -> Cut | None:
    """`backbone` cut below its top `n` layers with weights (BatchNorm excluded, as `top`
    trials count them); None where it cannot be cut there."""
    weighted = [
        layer
        for layer in backbone.layers
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    ]
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
    return Cut(bottom, top, n)


def activations(
    where: Cut, name: str, splits: tuple[Split, Split], pixels: Pixels, folder: Path
) -> tuple[np.ndarray, np.ndarray]:
    """The train and val splits' activations at the cut, computed once (one frozen pass) and
    memory-mapped from `folder`."""
    return tuple(  # type: ignore[return-value]
        features(
            where.bottom,
            f"{name}-cut-{where.depth}",
            split,
            pixels,
            folder,
            f"{what} below top-{where.depth}",
        )
        for split, what in zip(splits, ("train", "val"), strict=True)
    )


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
