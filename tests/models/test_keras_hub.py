"""`keras_hub:` candidates: a KerasHub BERT preset ported into the text encoder's own layers.

The presets users fetch (bert_tiny_en_uncased, ...) need internet; these tests save a small
BertBackbone of random weights and a BertTokenizer as a real preset folder with KerasHub itself,
and check the port against KerasHub's own forward pass."""

from pathlib import Path

import keras
import keras_hub
import numpy as np
import pytest

from tasks.core.config import Candidate
from tasks.core.errors import UserError
from tasks.modality.tokens import Texts, vocabulary
from tasks.selection.families import candidate_lineage, check_candidates, load_candidate

SENTENCES = ["The match ended in a draw.", "Shares fell sharply after the report on profits.", "Hi"]


def save_preset(folder: Path, vocab: list[str], positions: int = 64) -> keras_hub.models.BertBackbone:
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocab),
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=positions,
    )
    for weight in backbone.weights:  # LayerNorm's ones and zeros would hide a swapped gamma/beta
        weight.assign(np.random.default_rng(len(weight.path)).normal(0, 0.5, weight.shape).astype("float32"))
    backbone.save_to_preset(str(folder))
    keras_hub.models.BertTokenizer(vocabulary=vocab, lowercase=True).save_to_preset(str(folder))
    return backbone


@pytest.fixture(scope="module")
def preset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, keras_hub.models.BertBackbone]:
    folder = tmp_path_factory.mktemp("hub") / "bert_tiny_test"
    return folder, save_preset(folder, vocabulary())


def token_ids() -> np.ndarray:
    from tokenizers import Tokenizer

    from tasks.modality.tokens import tokenizer_path

    tokenizer = Tokenizer.from_file(str(tokenizer_path()))
    tokenizer.no_truncation()
    tokenizer.enable_padding(pad_id=0)
    return np.array([e.ids for e in tokenizer.encode_batch(SENTENCES)], dtype="int32")


def test_a_preset_ported_gives_kerashub_s_embeddings(preset, tmp_path):
    folder, backbone = preset
    model = load_candidate(Candidate(uri=f"keras_hub:{folder}"))
    ids = token_ids()
    assert (ids == 0).any(), "the sentences must differ in length, so padding is masked"
    hidden = backbone.predict({"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": ids != 0})
    mask = (ids != 0)[..., None]
    mean = (hidden["sequence_output"] * mask).sum(1) / mask.sum(1)
    expected = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    ours = model.predict(ids[:, None, :], verbose=0)
    np.testing.assert_allclose(ours, expected, atol=2e-5)

    # the ported model is the project's own layers: it saves and loads in safe mode without KerasHub
    assert not [layer for layer in model.layers if type(layer).__module__.startswith("keras_hub")]
    model.save(tmp_path / "ported.keras")
    again = keras.saving.load_model(tmp_path / "ported.keras", safe_mode=True)
    np.testing.assert_allclose(again.predict(ids[:, None, :], verbose=0), ours, atol=1e-6)


def test_the_preset_s_lineage_is_its_weights_file(preset):
    folder, _ = preset
    found = candidate_lineage(Candidate(uri=f"keras_hub:{folder}"))
    from tasks.data.lineage import file_sha256

    assert found["backbone_version"] == f"sha256={file_sha256(folder / 'model.weights.h5')[:16]}"


def test_presets_the_pipeline_cannot_read_are_refused_in_one_line(preset, tmp_path):
    folder, _ = preset
    other = tmp_path / "other_vocabulary"
    save_preset(other, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "match"])
    with pytest.raises(UserError, match=r"vocabulary \(7 tokens\) is not the text pipeline"):
        load_candidate(Candidate(uri=f"keras_hub:{other}"))
    with pytest.raises(UserError, match="cannot load the preset"):
        load_candidate(Candidate(uri=f"keras_hub:{tmp_path / 'no_preset_here'}"))
    with pytest.raises(UserError, match="takes texts, and the data are images"):
        check_candidates((Candidate(uri=f"keras_hub:{folder}"),), "images")
    model = load_candidate(Candidate(uri=f"keras_hub:{folder}"))
    with pytest.raises(UserError, match=r"reads at most 64 tokens at a time; set texts\.window to 64"):
        Texts(window=256).encoding_for(model, "keras_hub:test")
    assert Texts(window=64).encoding_for(model, "keras_hub:test").window == 64


def test_preset_uris_are_accepted_in_params():
    for uri in (
        "keras_hub:bert_tiny_en_uncased",
        "keras_hub:kaggle://keras/bert/keras/bert_tiny_en_uncased/2",
    ):
        assert Candidate(uri=uri).uri == uri
    with pytest.raises(ValueError, match="keras_hub:<BERT preset>"):
        Candidate(uri="keras_hub:")
