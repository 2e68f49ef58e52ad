"""Texts to token ids, the same in training and in the served model: MiniLM's WordPiece tokenizer
(`tokenizer.json`, Hugging Face `tokenizers`, Rust) with its own padding and its 128-token cut
switched off, each text cut to the version's `window` instead, and a batch padded with 0
(`[PAD]`) to its longest text. A served text model ships this module, `texts` and the
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


def ids(texts: Sequence[str], path: str, window: int) -> list[np.ndarray]:
    """Each text's token ids (int32, `[CLS]` ... `[SEP]`, at most `window`), in one Rust call."""
    return [np.asarray(e.ids, np.int32) for e in tokenizer(path, window).encode_batch(list(texts))]


def pad(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Token id rows as one (n, longest) int32 batch, 0-padded."""
    out = np.zeros((len(rows), max((len(r) for r in rows), default=0)), np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def row_reader(meta: dict[str, Any], tokenizer_file: str) -> Callable[[Any], np.ndarray]:
    """How a served text model reads one row (`text`), with the window its version recorded
    (`Tokens.meta`); the reader raises TextError."""
    window = int(meta["window"])

    def read(value: Any) -> np.ndarray:
        return ids([row_text(value)], tokenizer_file, window)[0]

    return read
