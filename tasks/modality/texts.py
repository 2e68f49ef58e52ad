"""Reading texts the same way everywhere: ingest, training and the served model.

A text file is untrusted bytes. It becomes a text only when it is UTF-8 (a leading byte-order
mark is dropped), holds something besides whitespace, and has no NUL or other control
character but tab, newline and carriage return; otherwise `TextError` says which and where
(the byte offset of the first byte that is not UTF-8, the character offset of a control
character). Its "fold" (case-folded, whitespace collapsed) is what near-duplicates share: the
split keeps texts of one fold in one split, as it keeps copies of one image.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

MAX_TEXT_BYTES = 1 * 1024 * 1024  # a text file (or served row) over this is refused, not read
# Unicode category Cc (C0 and C1 controls, DEL) but tab, newline and carriage return
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class TextError(ValueError):
    """Bytes that are not a text this project can use; the message says why."""


def text_of(data: bytes) -> str:
    """The text of a file's bytes, checked (see the module); raises TextError."""
    if len(data) > MAX_TEXT_BYTES:
        raise TextError(f"{len(data)} bytes is over the limit of {MAX_TEXT_BYTES} for one text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextError(f"not UTF-8 at byte {exc.start} (save the file as UTF-8)") from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise TextError("empty text (nothing but whitespace)" if text else "empty text (0 bytes)")
    found = _CONTROL.search(text)  # one pass in C: every text is checked again each epoch
    if found:
        char = found.group()
        name = "NUL" if char == "\0" else f"control character U+{ord(char):04X}"
        raise TextError(
            f"{name} at character {found.start()} (a binary file, or text pasted with control codes)"
        )
    return text


def fold(text: str) -> str:
    """What near-duplicates share: case-folded, every run of whitespace one space, trimmed."""
    return " ".join(text.casefold().split())


def inspect(data: bytes, count_tokens: Any = None) -> dict[str, object]:
    """One file's bytes -> its characters, tokens (by `count_tokens`, when given), the sha256 of
    its fold, `decodable`, and `error` when it is not a text this project can use."""
    out: dict[str, object] = {}
    try:
        text = text_of(data)
    except TextError as exc:
        out["error"] = str(exc)
        return out
    out.update(
        characters=len(text),
        fold_sha256=hashlib.sha256(fold(text).encode("utf-8")).hexdigest(),
        decodable=True,
    )
    if count_tokens is not None:
        out["tokens"] = int(count_tokens(text))
    return out
