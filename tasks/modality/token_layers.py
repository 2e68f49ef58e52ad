"""The small Keras layers a token-id input needs beside Keras' own (tasks/models/minilm.py):
position and token-type embeddings, the attention mask and the mean over real tokens, each
reading 0 as padding (`[PAD]`, as `text_rows.pad` pads); a long text's windows taken apart and
pooled again (`TakeWindows`, `PoolWindows`); and BERT's GELU (exact, or its tanh approximation)
in a form every export runtime has. Registered, so a saved text model loads in safe mode with
this module imported; a served text model ships it.
"""

from __future__ import annotations

import math
from typing import Any

import keras


@keras.saving.register_keras_serializable("transferops")
def gelu_erf(x: Any) -> Any:
    """BERT's exact GELU, 0.5 x (1 + erf(x / sqrt 2)), written with erf: TensorFlow's own exact
    gelu computes it with erfc, an op the ONNX converter has no mapping for."""
    return 0.5 * x * (1.0 + keras.ops.erf(x / math.sqrt(2.0)))


@keras.saving.register_keras_serializable("transferops")
def gelu_tanh(x: Any) -> Any:
    """GELU's tanh approximation, 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))): what
    KerasHub's BERT presets were trained with (Google's original BERT code)."""
    return 0.5 * x * (1.0 + keras.ops.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


@keras.saving.register_keras_serializable("transferops")
class PositionAndType(keras.layers.Layer):
    """Adds the position embedding of each place and the token-type 0 embedding."""

    def __init__(self, positions: int, width: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.positions, self.width = positions, width

    def build(self, input_shape: Any) -> None:
        self.position = self.add_weight(
            shape=(self.positions, self.width), name="position", initializer="zeros"
        )
        self.type = self.add_weight(shape=(self.width,), name="type", initializer="zeros")

    def call(self, x: Any) -> Any:
        # a gather and expand_dims, not `position[None, :length]`: LiteRT has no builtin for
        # a strided slice that adds an axis (it would need the Flex delegate)
        position = keras.ops.take(self.position, keras.ops.arange(keras.ops.shape(x)[1]), axis=0)
        return x + keras.ops.expand_dims(position, 0) + self.type

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "positions": self.positions, "width": self.width}


@keras.saving.register_keras_serializable("transferops")
class AttentionMask(keras.layers.Layer):
    """(n, length) token ids -> (n, length, length): which places may attend to which (no padding)."""

    def call(self, ids: Any) -> Any:
        keep = keras.ops.not_equal(ids, 0)
        return keras.ops.logical_and(keras.ops.expand_dims(keep, 1), keras.ops.expand_dims(keep, 2))


@keras.saving.register_keras_serializable("transferops")
class MaskedMean(keras.layers.Layer):
    """The mean over the places whose token is not padding, L2-normalised."""

    def call(self, hidden: Any, ids: Any) -> Any:
        mask = keras.ops.expand_dims(keras.ops.cast(keras.ops.not_equal(ids, 0), hidden.dtype), -1)
        summed = keras.ops.sum(hidden * mask, axis=1)
        mean = summed / keras.ops.maximum(keras.ops.sum(mask, axis=1), 1e-9)
        return mean / keras.ops.maximum(keras.ops.norm(mean, axis=-1, keepdims=True), 1e-12)


@keras.saving.register_keras_serializable("transferops")
class TakeWindows(keras.layers.Layer):
    """(n, windows, length) token ids -> the windows that hold a token, (m, length), and where
    each came from in the flattened (n * windows) batch: a text shorter than the batch's
    longest costs its own windows, not the batch's."""

    def call(self, ids: Any) -> Any:
        flat = keras.ops.reshape(ids, (-1, keras.ops.shape(ids)[2]))
        present = keras.ops.cast(keras.ops.any(keras.ops.not_equal(flat, 0), axis=-1), "int32")
        # the present windows' places in order: a stable sort puts them first (`where` would
        # need an int64 unpack that LiteRT lacks)
        order = keras.ops.cast(keras.ops.argsort(1 - present), "int32")
        index = keras.ops.slice(order, (0,), keras.ops.expand_dims(keras.ops.sum(present), 0))
        return keras.ops.take(flat, index, axis=0), index

    def compute_output_spec(self, ids: Any) -> Any:
        return (
            keras.KerasTensor((None, ids.shape[2]), dtype=ids.dtype),
            keras.KerasTensor((None,), dtype="int32"),
        )


@keras.saving.register_keras_serializable("transferops")
class PoolWindows(keras.layers.Layer):
    """Each text's window embeddings (m, width), put back in place (`TakeWindows`' index),
    averaged over the text's windows and L2-normalised: one (n, width) embedding a text."""

    def call(self, embeddings: Any, index: Any, ids: Any) -> Any:
        n, windows = keras.ops.shape(ids)[0], keras.ops.shape(ids)[1]
        width = embeddings.shape[-1]
        placed = keras.ops.scatter(keras.ops.expand_dims(index, -1), embeddings, (n * windows, width))
        placed = keras.ops.reshape(placed, (n, windows, width))
        present = keras.ops.cast(keras.ops.any(keras.ops.not_equal(ids, 0), axis=-1), placed.dtype)
        present = keras.ops.expand_dims(present, -1)
        mean = keras.ops.sum(placed, axis=1) / keras.ops.maximum(keras.ops.sum(present, axis=1), 1.0)
        return mean / keras.ops.maximum(keras.ops.norm(mean, axis=-1, keepdims=True), 1e-12)

    def compute_output_spec(self, embeddings: Any, index: Any, ids: Any) -> Any:
        return keras.KerasTensor((None, embeddings.shape[-1]), dtype=embeddings.dtype)


@keras.saving.register_keras_serializable("transferops")
class TokenCounts(keras.layers.Layer):
    """Token ids, (n, length) or (n, windows, length) -> (n, vocabulary - 1): how often each
    token of the vocabulary but [PAD] is in the text, as sublinear term frequency (1 + log
    count, 0 where absent; TF-IDF's `sublinear_tf`). A segment sum, which LiteRT and ONNX both
    run exactly (Keras' `CategoryEncoding` counts with an op LiteRT has only in Flex)."""

    def __init__(self, vocabulary: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.vocabulary = vocabulary

    def call(self, ids: Any) -> Any:
        flat = keras.ops.reshape(ids, (keras.ops.shape(ids)[0], -1))
        n, length = keras.ops.shape(flat)[0], keras.ops.shape(flat)[1]
        rows = keras.ops.repeat(keras.ops.expand_dims(keras.ops.arange(n, dtype="int32"), 1), length, axis=1)
        cells = keras.ops.reshape(rows * self.vocabulary + flat, (-1,))  # (text, token) as one index
        ones = keras.ops.ones((n * length,), "float32")
        counts = keras.ops.segment_sum(ones, cells, num_segments=n * self.vocabulary, sorted=False)
        counts = keras.ops.reshape(counts, (n, self.vocabulary))[:, 1:]
        return (1.0 + keras.ops.log(keras.ops.maximum(counts, 1.0))) * keras.ops.minimum(counts, 1.0)

    def compute_output_shape(self, shape: Any) -> tuple[Any, int]:
        return (shape[0], self.vocabulary - 1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "vocabulary": self.vocabulary}


@keras.saving.register_keras_serializable("transferops")
class FeatureWeights(keras.layers.Layer):
    """Each feature times its own fixed weight (ones as built; set from a training split, as
    `Tokens.fit_baseline` sets inverse document frequencies)."""

    def build(self, shape: Any) -> None:
        self.scale = self.add_weight(shape=(shape[-1],), initializer="ones", trainable=False, name="scale")

    def call(self, x: Any) -> Any:
        return x * self.scale
