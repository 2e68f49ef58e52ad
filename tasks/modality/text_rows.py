"""Texts to token ids, the same in training and in the served model: MiniLM's WordPiece tokenizer
(`tokenizer.json`, Hugging Face `tokenizers`, Rust) with its own padding and its 128-token cut
switched off; each text split into windows of the version's `window` tokens (its first
`windows` of them are read; 1 cuts a text to its first window), and a batch padded with 0
(`[PAD]`) to its most windows and its longest window. A served text model ships this module, `texts` and the
tokenizer file, nothing else of `tasks`.

A served row is a string (what JSON carries; in process also the bytes of a text file). It is
checked as a text file is (`texts.text_of`: UTF-8, not empty, no control characters, at most
`MAX_TEXT_BYTES`); a row that fails gets its reason, the other rows their labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import numpy as np

from tasks.modality.texts import TextError, text_of


@cache
def tokenizer(path: str, window: int) -> Any:
    """The tokenizer of `path`, cutting every text to `window` tokens and padding nothing."""
    from tokenizers import Tokenizer

    found = Tokenizer.from_file(path)
    found.no_padding()
    found.enable_truncation(max_length=window)
    return found


def row_text(value: Any) -> str:
    """One served row as a checked text; raises TextError."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return text_of(bytes(value))
    if not isinstance(value, str):
        got = "null" if value is None or value != value else type(value).__name__  # NaN: a missing cell
        raise TextError(f"expected a text (a string), got {got}")
    # lone surrogates (from JSON's \ud800 escapes) become the bytes they stand for: not UTF-8
    return text_of(value.encode("utf-8", "surrogateescape"))


def ids(texts: Sequence[str], path: str, window: int, windows: int = 1) -> list[list[np.ndarray]]:
    """Each text's first `windows` windows of token ids (int32, each `[CLS]` ... `[SEP]`, at
    most `window` long, one after the other without overlap), in one Rust call."""
    out = []
    for found in tokenizer(path, window).encode_batch(list(texts)):
        parts = [found, *found.overflowing[: max(windows, 1) - 1]]
        out.append([np.asarray(part.ids, np.int32) for part in parts])
    return out


def pad(rows: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Texts' windows as one (n, most windows, longest window) int32 batch, 0-padded."""
    most = max((len(r) for r in rows), default=0)
    longest = max((len(w) for r in rows for w in r), default=0)
    out = np.zeros((len(rows), most, longest), np.int32)
    for i, row in enumerate(rows):
        for j, part in enumerate(row):
            out[i, j, : len(part)] = part
    return out


def pad_flat(rows: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Texts' first windows as one (n, longest) batch: the input of versions registered before
    pooled windows (`windows` 0 in their meta)."""
    return pad([r[:1] for r in rows])[:, 0, :]


def row_reader(meta: dict[str, Any], tokenizer_file: str) -> Callable[[Any], list[np.ndarray]]:
    """How a served text model reads one row (`text`), with the window (and windows) its version
    recorded (`Tokens.meta`); the reader raises TextError."""
    window, windows = int(meta["window"]), int(meta.get("windows", 0))

    def read(value: Any) -> list[np.ndarray]:
        return ids([row_text(value)], tokenizer_file, window, windows)[0]

    return read


def batcher(meta: dict[str, Any]) -> Callable[[Sequence[Sequence[np.ndarray]]], np.ndarray]:
    """How a served text model pads its rows into a batch: by windows, or flat before them."""
    return pad if int(meta.get("windows", 0)) else pad_flat
