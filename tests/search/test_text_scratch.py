"""The search's scratch baseline on texts trains the text encoding's own small network (a bag of
token embeddings, fastText's classifier) from nothing, not a fresh transformer; padding and
empty windows change nothing of what it computes."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.core.config import FinetuneParams, SearchParams
from tasks.data.datasets import Split
from tasks.modality.tokens import Tokens
from tasks.models.minilm import build_minilm
from tasks.search import records, scratch, strategy

pytestmark = pytest.mark.slow
TOKENS = Tokens(window=16, windows=2)
WORDS = ({0: "goal match team striker cup", 1: "shares bank market profit loss"}, "the a of and")


def texts(root, n: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    topics, filler = WORDS
    files, y = [], []
    for i in range(n):
        k = i % 2
        words = rng.choice(topics[k].split() + filler.split(), size=int(rng.integers(4, 30))).tolist()
        path = root / str(k) / f"{seed}-{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(" ".join(words))
        files.append(path.relative_to(root).as_posix())
        y.append(k)
    return Split(root, files, np.array(y))


def test_the_bag_of_embeddings_ignores_padding_and_empty_windows():
    model = TOKENS.scratch()
    one = np.array([[[101, 7592, 2088, 102], [0, 0, 0, 0]]], dtype="int32")
    padded = np.zeros((1, 3, 6), "int32")
    padded[0, 0, :4] = one[0, 0]
    np.testing.assert_allclose(np.asarray(model(one)), np.asarray(model(padded)), atol=1e-6)
    assert model.output_shape == (None, 64)


def test_the_scratch_baseline_on_texts_is_the_bag_of_embeddings_and_learns(tmp_path):
    train, val = texts(tmp_path, 60, 0), texts(tmp_path, 20, 1)
    minilm = build_minilm(32, 2, 1, 64)  # a text backbone; scratch never trains it
    none = np.zeros((0, 1), "float32")
    backbone = records.SearchBackbone("minilm-tiny", minilm, TOKENS, none, none)
    assert scratch.architecture(backbone).name == "scratch:bag_of_embeddings"
    params = SearchParams(strategies=("scratch",), scratch_epochs=30, scratch_patience=10, ensemble_size=1)
    found = strategy.search([backbone], train, val, 2, params, FinetuneParams(batch_size=16), None)
    assert found.backbone == "scratch:bag_of_embeddings" and found.best.trial_id == scratch.SCRATCH
    assert found.val_accuracy >= 0.9, found.explanation()
    assert not any("attention" in layer.name for layer in found.model.layers)
