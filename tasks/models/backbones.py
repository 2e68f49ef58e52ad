"""Backbones and classifiers: building them (no data needed) and loading candidates.

A backbone maps (size, size, 3) uint8-range RGB images to a feature vector and carries its
own preprocessing, so every model in the project takes raw pixels. A classifier is
`input -> backbone (inference mode) -> dropout -> dense softmax "head"`.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from tasks.core import progress
from tasks.core.config import Candidate, registry_uri

# Keras Applications whose preprocessing is inside the model (they take 0..255 pixels).
_IN_MODEL_PREPROCESSING = ("MobileNetV3", "EfficientNet", "ConvNeXt")


# Every random initial value and dropout mask comes from an explicit seed. Keras' default
# (seed=None) draws one from Python's global `random` when a layer is built, which other threads
# of the process (Prefect's, MLflow's) also draw from: runs would differ by thread timing.


def glorot(seed: int) -> keras.initializers.Initializer:
    return keras.initializers.GlorotUniform(seed=seed)


def build_backbone(image_size: int, width: int = 32, name: str = "backbone", seed: int = 0) -> keras.Model:
    """A small CNN: three conv blocks (width, 2*width, 4*width filters) and global pooling."""
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
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


def build_classifier(
    backbone: keras.Model, dense: keras.layers.Layer, dropout: float, seed: int = 0
) -> keras.Model:
    """Backbone + head. The backbone is always called with training=False, so its BatchNorm
    layers stay in inference mode even when unfrozen (Keras' fine-tuning guide)."""
    inputs = keras.Input(backbone.input_shape[1:], name="pixels")
    x = backbone(inputs, training=False)
    x = keras.layers.Dropout(dropout, seed=seed + 2)(x)
    return keras.Model(inputs, dense(x), name="classifier")


def single(classifier: keras.Model) -> keras.Model:
    """The classifier itself, or for an ensemble (tasks/models/strategy.py) its best member, `member_0`."""
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


def keras_application(name: str, image_size: int, weights: str | None, seed: int = 0) -> keras.Model:
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
        input_shape=(image_size, image_size, 3),
        include_top=False,
        weights="imagenet" if weights == "imagenet" else None,
        pooling="avg",
    )
    if file_weights:
        model.load_weights(str(weights))
    elif weights in (None, "none"):
        reseed(model, seed)
    return model


def load_candidate(candidate: Candidate, image_size: int, seed: int = 0) -> keras.Model:
    """Materialise a candidate backbone (see `Candidate`)."""
    kind, _, ref = candidate.uri.partition(":")
    if kind == "registry":
        import mlflow

        model = mlflow.keras.load_model(registry_uri(ref))
    elif kind == "keras":
        model = keras_application(ref, image_size, candidate.weights, seed)
    elif kind == "file":
        if not Path(ref).is_file():
            raise FileNotFoundError(f"{candidate.uri}: model file not found")
        model = keras.saving.load_model(ref)
    else:
        raise ValueError(f"{candidate.uri}: candidate must start with registry:, keras: or file:")
    expected = (image_size, image_size, 3)
    if tuple(model.input_shape[1:]) != expected or len(model.output_shape) != 2:
        raise ValueError(
            f"{candidate.uri}: backbone maps {model.input_shape} -> {model.output_shape}; "
            f"expected {expected} -> (features,)"
        )
    return model


def extract_features(
    backbone: keras.Model, images: np.ndarray, batch_size: int = 256, description: str = "features"
) -> np.ndarray:
    """Frozen-backbone features, in inference mode, batch by batch (a progress bar on a terminal)."""
    starts = range(0, len(images), batch_size)
    batches = [
        np.asarray(backbone.predict_on_batch(images[i : i + batch_size].astype("float32")))
        for i in progress.bar(starts, description, total=len(starts), unit="batch")
    ]
    if not batches:
        return np.zeros((0, backbone.output_shape[-1]), dtype="float32")
    return np.concatenate(batches)
