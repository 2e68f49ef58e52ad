"""The modality seam: what differs between kinds of examples (images; texts next) sits behind
one `Modality` object each, and everything else of the pipeline is written once against it.

A modality owns finding and inspecting examples (its manifest columns and checks), encoding
an example into model input (an `Encoding` per backbone: images' `Pixels`), the input stream,
its raw-input baseline, how a served model reads a row and how an export takes input. Split,
select, the feature cache, the search, ensembles, distillation, evaluation, the gate, the
registry, drift and the flows take a modality (or one of its encodings) and never look inside
an example.

A modality registers itself under its name (`register`); `from_params` finds one for a run's
params and data (`data.modality`, or `detect`ed from the folder), `from_meta` a registered
version's recorded input. Its settings are the params section of its name (`images:`, `texts:`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import keras
    import numpy as np
    import tensorflow as tf

    from tasks.core.config import Params


class Encoding(Protocol):
    """How one example becomes a backbone's input (images: `Pixels`). Frozen and picklable: it
    travels in stage results and to Dask workers."""

    modality: str
    baseline_uri: str  # the raw-input baseline's name in the search's records
    baseline_c: float  # its logistic regression's inverse L2 penalty

    def key(self) -> str:
        """What decides the model input, for cache keys (two backbones with equal keys share it)."""
        ...

    @property
    def fingerprint(self) -> str:
        """As a stage input (flows.stages.caching): everything that decides the input."""
        ...

    @property
    def cost(self) -> int:
        """Input values per example: the smallest encoding is the cheapest backbone's."""
        ...

    def describe(self) -> str:
        """For a log line: `224 px`."""
        ...

    def meta(self) -> dict[str, Any]:
        """What a served model or an export needs to read input exactly so (JSON): `modality`,
        the served input `column`, and the settings."""
        ...

    def artifacts(self) -> dict[str, Path]:
        """Files a served model or an export needs beside its weights (texts: the tokenizer)."""
        ...

    @property
    def requirements(self) -> tuple[str, ...]:
        """Packages a served model needs to read this input, beside TensorFlow and MLflow."""
        ...

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
        """`files` under `root` as a `tf.data` stream of model-input batches (with labels).
        `decoders`: each file's manifest `decoder`, where its modality records one (images:
        which files TensorFlow's own decoders read exactly)."""
        ...

    def examples(self, root: Path, files: Sequence[str], parts: tuple[Path, ...] = ()) -> np.ndarray:
        """A few files as one array, in memory (thumbnails, a served batch, a test)."""
        ...

    def preview(self, root: Path, files: Sequence[str], parts: tuple[Path, ...] = ()) -> list[Any]:
        """How a few files are shown to a person (the gallery of mistakes): images as arrays,
        texts as their opening characters (plain strings: whoever renders them escapes them)."""
        ...

    def baseline(self) -> keras.Model:
        """The raw-input baseline as a backbone taking this input (a logistic regression on its
        features is the search's floor)."""
        ...

    def fit_baseline(self, model: keras.Model, train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """What the baseline `model` learns from the training split's features `train` (texts:
        inverse document frequencies) set in it; the function from features it computed before
        to what it computes now."""
        ...

    def scratch(self) -> keras.Model | None:
        """A small network taking this input for the search's scratch baseline to train from
        nothing, or None: the smallest backbone's architecture is (images)."""
        ...

    def order(self, root: Path, files: Sequence[str], parts: tuple[Path, ...] = ()) -> np.ndarray | None:
        """The order to run a feature pass in (its rows are stored in the files' order): texts
        by length, so that a batch, padded to its longest text, pads little; None: as given."""
        ...


class Augmentation(Protocol):
    """Random changes to training batches that keep their labels (never at inference)."""

    @property
    def fingerprint(self) -> str: ...

    def layers(self, seed: int) -> keras.Layer | None:
        """The layers that change a batch of this modality's input, or None (all off)."""
        ...


class Modality(Protocol):
    """One kind of example, with the settings of a run (a frozen, picklable value)."""

    name: str
    columns: tuple[str, ...]  # the manifest columns its `inspect` fills, after the common ones
    integer_columns: tuple[str, ...]  # those of them that hold whole numbers (or nothing)
    noun: str  # what one example is called in messages: "image"
    augment: Augmentation | None  # of training batches (not in `fingerprint`: it keys no checks)

    @property
    def fingerprint(self) -> str: ...

    def inspect(self, data: bytes) -> dict[str, object]:
        """One file's bytes -> its manifest columns, `decodable`, and `error` when it is unusable."""
        ...

    def expectations(self) -> list[tuple[Any, str]]:
        """Great Expectations checks on the manifest's own columns, each with the reason a
        failing row gets."""
        ...

    def statistics(self, files: Any) -> dict[str, float]:
        """What validation reports of the usable files beyond the checks (texts: how many are
        longer than the window)."""
        ...

    def encoding(self, size: int) -> Encoding:
        """Input of a backbone this modality builds itself, at `size`."""
        ...

    def encoding_for(self, model: keras.Model, uri: str) -> Encoding:
        """The input `model` takes (a ValueError names what it takes instead)."""
        ...


_REGISTRY: dict[str, Callable[[Params], Modality]] = {}
_FROM_META: dict[str, Callable[[dict[str, Any]], Encoding]] = {}


def register(
    name: str, from_params: Callable[[Params], Modality], from_meta: Callable[[dict[str, Any]], Encoding]
) -> None:
    """Make modality `name` known: built from a run's params, and an encoding from its `meta`."""
    _REGISTRY[name] = from_params
    _FROM_META[name] = from_meta


def _load() -> None:
    from tasks.modality import pixels, tokens  # noqa: F401  (register "images" and "texts")


# At most this many files are looked at to tell a folder's modality
DETECT_FILES = 200


def detect(folder: Path) -> str:
    """`texts` when most of the first files under `folder` (sorted, in class folders) are `.txt`,
    else `images`."""
    from tasks.core.files import is_ignored

    seen = texts = 0
    for path in sorted(Path(folder).glob("*/*")):
        if seen >= DETECT_FILES:
            break
        if path.is_file() and not is_ignored(path):
            seen += 1
            texts += path.suffix.lower() == ".txt"
    return "texts" if seen and texts * 2 > seen else "images"


def named(name: str, params: Params) -> Modality:
    """Modality `name` with its params section's settings."""
    _load()
    return _REGISTRY[name](params)


def from_params(params: Params, data: Path | None = None) -> Modality:
    """The modality of a run on the folder `data`: `data.modality`, or with `auto` the one
    `detect` finds there (texts for a table file, images without a folder), with its params
    section's settings."""
    _load()
    from tasks.core.files import is_table

    name = params.data.modality
    if name == "auto" and data is not None and is_table(data):
        name = "texts"  # a table holds texts (tasks/data/tables.py)
    elif name == "auto":
        name = detect(data) if data is not None and Path(data).is_dir() else "images"
    return named(name, params)


def from_meta(meta: dict[str, Any]) -> Encoding:
    """The encoding a registered version or an export recorded (`Encoding.meta`); versions
    logged before modalities recorded none are images."""
    _load()
    name = str(meta.get("modality", "images"))
    if name not in _FROM_META:
        raise ValueError(f"modality {name!r} is not known to this transferops: upgrade it")
    return _FROM_META[name](meta)
