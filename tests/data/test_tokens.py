"""Texts as a stream of token ids: read inside the data folder, checked, tokenized in batches,
cut to the window and padded per batch (real MiniLM tokenizer)."""

import numpy as np
import pytest

from tasks.core.files import UnsafePathError
from tasks.modality.texts import TextError
from tasks.modality.tokens import Tokens, count_tokens


def text_folder(root, texts):
    files = []
    for i, text in enumerate(texts):
        path = root / f"c{i % 2}" / f"{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        files.append(path.relative_to(root).as_posix())
    return files


def test_batches_are_padded_to_their_longest_text_and_cut_to_the_window(tmp_path):
    long = "word " * 400
    files = text_folder(tmp_path, ["Hello world.", "A much longer sentence than the first one is.", long, "Hi."])
    tokens = Tokens(window=16, windows=0)  # the first window alone: (n, length)
    first, second = list(tokens.batches(tmp_path, files, 2).as_numpy_iterator())
    assert first.dtype == np.int32 and first.shape == (2, count_tokens("A much longer sentence than the first one is."))
    assert first[0, 0] == 101 and (first[0] == 102).sum() == 1 and first[0, -1] == 0  # [CLS] ... [SEP], padding
    assert second.shape == (2, 16) and second[0, -1] == 102  # the long text cut to the window, [SEP] kept
    assert count_tokens(long) == 402 and tokens.examples(tmp_path, files[2:3]).shape == (1, 16)


def test_a_long_text_is_read_as_windows_padded_per_batch(tmp_path):
    """800 tokens at a 16-token window: 14 of the text's tokens a window, each window [CLS] ...
    [SEP]; the first 3 windows are read; a short text beside it is one window and padding."""
    long = " ".join(f"w{i % 10}" for i in range(400))
    files = text_folder(tmp_path, [long, "Hi."])
    batch = Tokens(window=16, windows=3).examples(tmp_path, files)
    assert batch.shape == (2, 3, 16) and batch.dtype == np.int32
    assert (batch[0, :, 0] == 101).all() and (batch[0, :, -1] == 102).all()
    whole = Tokens(window=512, windows=0).examples(tmp_path, files[:1])[0]
    content = whole[1:-1]  # the text's tokens, without its one [CLS] and [SEP]
    assert batch[0, 1, 1:-1].tolist() == content[14:28].tolist()  # windows follow on, no overlap
    assert batch[1, 0, : count_tokens("Hi.")].tolist()[0] == 101 and not batch[1, 1:].any()
    assert count_tokens(long) == 802  # "w0" is "w", "##0"
    assert Tokens(window=16, windows=64).examples(tmp_path, files).shape[1] == -(-800 // 14)


def test_labels_ride_along_and_a_seed_reshuffles_every_epoch_the_same_way(tmp_path):
    files = text_folder(tmp_path, [f"text number {i}" for i in range(10)])
    y = np.arange(10)
    stream = Tokens(32).batches(tmp_path, files, 4, labels=y, shuffle_seed=3)
    epochs = [np.concatenate([labels for _, labels in stream.as_numpy_iterator()]) for _ in range(2)]
    assert sorted(epochs[0]) == list(range(10)) and list(epochs[0]) != list(epochs[1])
    again = Tokens(32).batches(tmp_path, files, 4, labels=y, shuffle_seed=3)
    assert list(np.concatenate([labels for _, labels in again.as_numpy_iterator()])) == list(epochs[0])
    ids, labels = next(iter(Tokens(32).batches(tmp_path, files, 4, labels=y).as_numpy_iterator()))
    assert list(labels) == [0, 1, 2, 3] and ids[1].tolist() == Tokens(32).examples(tmp_path, files[1:2])[0].tolist()


def test_a_bad_text_or_a_path_out_of_the_folder_is_refused(tmp_path):
    files = text_folder(tmp_path / "data", ["fine"])
    (tmp_path / "data" / "c0" / "bad.txt").write_bytes(b"caf\xe9")
    with pytest.raises(TextError, match="not UTF-8 at byte 3"):
        Tokens().examples(tmp_path / "data", ["c0/bad.txt"])
    (tmp_path / "secret.txt").write_text("outside")
    with pytest.raises(UnsafePathError):
        Tokens().examples(tmp_path / "data", ["../secret.txt"])
    assert Tokens().examples(tmp_path / "data", files).shape[0] == 1


def test_the_raw_text_baseline_is_tf_idf_of_the_tokens_as_scikit_learn_computes_it():
    from sklearn.feature_extraction.text import TfidfVectorizer

    ids = np.array([[101, 7592, 2088, 102, 0], [101, 7592, 7592, 102, 0], [101, 2088, 3000, 102, 0]], "int32")
    tokens = Tokens(windows=0)
    baseline = tokens.baseline()
    before = np.asarray(baseline(ids))  # as built: sublinear tf, L2-normalised
    assert before.shape == (3, 30521)  # feature j: token j + 1 ([PAD] left out)
    reweighed = tokens.fit_baseline(baseline, before)  # inverse document frequencies of these 3
    features = np.asarray(baseline(ids))
    np.testing.assert_allclose(reweighed(before), features, atol=1e-6)  # cached features, refitted
    vectorizer = TfidfVectorizer(analyzer=lambda text: text, sublinear_tf=True)
    expected = vectorizer.fit_transform([[str(t) for t in row if t] for row in ids]).toarray()
    columns = [int(token) - 1 for token in vectorizer.get_feature_names_out()]
    np.testing.assert_allclose(features[:, columns], expected, atol=1e-6)
    assert np.count_nonzero(features) == np.count_nonzero(expected) == 11
    np.testing.assert_array_equal(np.asarray(baseline(ids[:1, :4])), features[:1])  # padding: nothing
    windowed = np.asarray(Tokens(windows=2).baseline()(np.stack([ids[:1, :4], ids[1:2, :4]], axis=1)))
    flat = np.asarray(Tokens(windows=0).baseline()(np.concatenate([ids[:1, :4], ids[1:2, :4]], axis=1)))
    np.testing.assert_allclose(windowed, flat, atol=1e-7)  # every window's tokens, counted together


def test_a_feature_pass_runs_shortest_first_and_keeps_each_text_in_its_row(tmp_path):
    """Bucketing by length: `Tokens.order` sorts a split by file size, the pass runs in that
    order (a batch pads little) and each text's features land in its own row, in the cache
    file and in memory alike, and a model's predictions (`Split.in_run_order`, `restore`)."""
    from tasks.data.datasets import Split
    from tasks.models.features import features

    rng = np.random.default_rng(0)
    texts = [" ".join(f"word{j}" for j in range(int(n))) for n in rng.integers(1, 60, 150)]
    files = text_folder(tmp_path / "data", texts)
    tokens = Tokens(window=32, windows=2)
    order = tokens.order(tmp_path / "data", files)
    sizes = [len(texts[i].encode()) for i in order]
    assert sorted(order.tolist()) == list(range(150)) and sizes == sorted(sizes) and sizes[0] < sizes[-1]
    split = Split(tmp_path / "data", files, np.arange(150) % 2)
    model = tokens.baseline()  # TF-IDF with unit idf: exact, and each text's alone
    alone = np.concatenate([np.asarray(model(tokens.examples(split.root, [f]))) for f in files])
    cached = features(model, "tokens:tfidf", split, tokens, tmp_path / "project")
    in_memory = features(model, "tokens:tfidf", split, tokens, None)
    assert isinstance(cached, np.memmap) and np.allclose(cached, alone, atol=1e-6)
    assert np.allclose(in_memory, alone, atol=1e-6)
    # a model's pass over a split (the search's val probabilities) runs in that order too
    from tasks.search.heads import streamed_probabilities

    assert np.allclose(streamed_probabilities(model, tokens, split), alone, atol=1e-6)


def test_a_training_stream_is_bucketed_by_length_and_keeps_each_label_with_its_text(tmp_path):
    """Shuffled batches hold texts of like length (a batch pads little), every text comes once
    an epoch with its own label, and the epochs differ."""
    texts = [("short " if i % 2 else "a much longer text than that, " * 8) + str(i) for i in range(64)]
    files = text_folder(tmp_path, texts)
    y = np.arange(64) % 2  # 1: short
    stream = Tokens(window=128, windows=1).batches(tmp_path, files, 8, labels=y, shuffle_seed=0)
    epochs = []
    for _ in range(2):
        seen = []
        for ids, labels in stream.as_numpy_iterator():
            lengths = (ids != 0).reshape(len(ids), -1).sum(axis=1)
            assert len(set(labels.tolist())) == 1, labels  # one length a batch: bucketed
            assert ((lengths < 10) == (labels == 1)).all()  # and each label with its own text
            seen.append(tuple(lengths.tolist()))
        epochs.append(seen)
        assert sum(len(b) for b in seen) == 64
    assert epochs[0] != epochs[1]
    # its length is known (Keras warned "Your input ran out of data" at every epoch otherwise)
    assert stream.cardinality().numpy() == len(epochs[0]) == 8
    assert Tokens(window=128, windows=4).batches(tmp_path, files, 8).cardinality().numpy() == 32  # 2 a batch
