"""Markdown that shows untrusted names safely (model cards, run summaries, Prefect artifacts).
Class and folder names come from the user's folders: they go into code spans with backticks,
pipes and newlines taken out, so a hostile name cannot inject markup, links or table cells."""

from __future__ import annotations

from typing import Any


def code(text: object) -> str:
    """`text` as an inline code span that cannot break out of itself or a table cell."""
    return "`" + str(text).replace("`", "'").replace("|", "/").replace("\r", " ").replace("\n", " ") + "`"


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table, one line per row (cells are the caller's: escape names with `code`)."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
    ]
