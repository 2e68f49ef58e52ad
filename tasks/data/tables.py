"""Tables of texts: one CSV, JSONL or Parquet file with a text and a label column is staged as
class folders of `.txt` files, so validation, the split, the stream and everything after them
read a table exactly as they read a folder.

The staged folder is `.transferops/tables/<md5>-<columns>/<label>/row-<n>.txt` (n: the 1-based
row, so a check's message names the row), written once per table content and column names and
reused after. Its data version is the table's own md5, the hash `dvc add TABLE` records, so a
run on a table carries the version DVC versions, `reproduce` restores the table and stages it
again, and `gc` removes stagings no kept version needs.

The table is untrusted: it is read row by row (memory flat in its rows), a label becomes a
folder name only when it is a safe one (no `/`, `\\`, control character, leading dot), and a
row without a label or whose text is not a string is refused, all of them listed in one
message naming the rows.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.core import progress
from tasks.core.errors import UserError
from tasks.core.files import TABLE_FORMATS, is_table, printable

if TYPE_CHECKING:
    from tasks.core.config import Params

STAGED = Path(".transferops") / "tables"  # under the project root
MAX_LISTED = 20  # problem rows a refusal lists
MAX_LABEL_BYTES = 200
FIELD_LIMIT = 64 * 1024 * 1024  # a CSV field over this is a broken file, not a text


def file_md5(path: Path) -> str:
    """md5 of a file's bytes, as DVC 3 records a file (streamed)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def label_problem(label: object) -> str | None:
    """Why `label` cannot name a class folder, or None."""
    if label is None or (isinstance(label, float) and label != label) or label == "":
        return "no label"
    if isinstance(label, bool) or not isinstance(label, str | int):
        return f"label is {type(label).__name__}, not a string"
    name = str(label)
    if name in (".", "..") or name.startswith(".") or any(c in name for c in "/\\") or not name.isprintable():
        return f"label {printable(name)!r} cannot name a class (no '/', '\\', control characters or leading '.')"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_LABEL_BYTES:
        return f"label of over {MAX_LABEL_BYTES} bytes"
    return None


def _csv_rows(path: Path, text: str, label: str | None) -> Iterator[tuple[int, object, object]]:
    csv.field_size_limit(FIELD_LIMIT)
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        _require(path, reader.fieldnames or [], text, label)
        for number, row in enumerate(reader, start=1):
            yield number, row.get(text), row.get(label) if label else None


def _jsonl_rows(path: Path, text: str, label: str | None) -> Iterator[tuple[int, object, object]]:
    seen_columns = False
    with open(path, "rb") as handle:
        number = 0
        for line in handle:
            if not line.strip():
                continue
            number += 1
            try:
                row = json.loads(line)
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
                yield number, _Bad(f"not a JSON line ({str(exc).splitlines()[0][:80]})"), None
                continue
            if not isinstance(row, dict):
                yield number, _Bad(f"a JSON {type(row).__name__}, not an object"), None
                continue
            if not seen_columns:
                _require(path, list(row), text, label)
                seen_columns = True
            yield number, row.get(text), row.get(label) if label else None


def _parquet_rows(path: Path, text: str, label: str | None) -> Iterator[tuple[int, object, object]]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    _require(path, table.schema_arrow.names, text, label)
    number = 0
    for batch in table.iter_batches(batch_size=4096, columns=[text, label] if label else [text]):
        for row in batch.to_pylist():
            number += 1
            yield number, row[text], row[label] if label else None


class _Bad(str):
    """A row that could not be read at all (its reason)."""


def _require(path: Path, columns: list[str], text: str, label: str | None) -> None:
    missing = [c for c in (text, label) if c and c not in columns]
    if missing:
        have = ", ".join(printable(str(c)) for c in columns[:12]) or "none"
        raise UserError(
            f"{path.name}: no column {printable(missing[0])!r} (its columns: {have}); "
            "name the columns with --set texts.text_column=... texts.label_column=..."
        )


READERS = {"csv": _csv_rows, "jsonl": _jsonl_rows, "parquet": _parquet_rows}


def rows(path: Path, text: str, label: str | None) -> Iterator[tuple[int, object, object]]:
    """(row number from 1, text cell, label cell or None without `label`) of every row,
    streamed; UserError when the file cannot be read as its format or lacks a column."""
    import pyarrow

    kind = TABLE_FORMATS[path.suffix.lower()]
    last = 0
    try:
        for row in READERS[kind](path, text, label):
            last = row[0]
            yield row
    except UnicodeDecodeError:
        raise UserError(f"{path.name}: not UTF-8 after row {last} (save the table as UTF-8)") from None
    except (csv.Error, pyarrow.ArrowException, OSError) as exc:
        raise UserError(f"{path.name}: cannot be read as {kind} ({str(exc).splitlines()[0][:160]})") from None


def source_of(folder: Path | str) -> dict[str, str] | None:
    """The table a staged folder came from (its record), or None for any other folder."""
    folder = Path(folder)
    record = folder.with_name(folder.name + ".json")
    if folder.parent.name != STAGED.name or folder.parent.parent.name != STAGED.parent.name:
        return None
    try:
        return json.loads(record.read_text())
    except (OSError, ValueError):
        return None


def stage(table: Path, root: Path, text: str = "text", label: str = "label") -> Path:
    """The staged class folders of `table` under `root` (written now unless they already are);
    UserError listing the rows that cannot be staged."""
    table = Path(table).resolve()
    md5 = file_md5(table)
    columns = hashlib.sha256(json.dumps([text, label]).encode()).hexdigest()[:8]
    target = root / STAGED / f"{md5}-{columns}"
    record = {"table": str(table), "md5": md5, "text_column": text, "label_column": label}
    done = target.with_name(target.name + ".json")
    if target.is_dir() and done.is_file():
        done.write_text(json.dumps({**json.loads(done.read_text()), "table": str(table)}))
        return target
    writing = target.with_name(f"{target.name}.writing-{os.getpid()}")  # gc removes a leftover
    shutil.rmtree(writing, ignore_errors=True)
    problems: list[str] = []
    made: set[str] = set()
    count = 0
    for number, cell, name in progress.bar(rows(table, text, label), f"staging {table.name}", unit="row"):
        why = cell if isinstance(cell, _Bad) else label_problem(name)
        if why is None and cell is None:
            why = "no text"
        elif why is None and not isinstance(cell, str):
            why = f"text is {type(cell).__name__}, not a string"
        if why is not None:
            problems.append(f"row {number}: {why}")
            continue
        folder = writing / str(name)
        if str(name) not in made:
            folder.mkdir(parents=True, exist_ok=True)
            made.add(str(name))
        # a lone surrogate from JSON stays as it came: ingest names it "not UTF-8"
        (folder / f"row-{number}.txt").write_bytes(str(cell).encode("utf-8", "surrogatepass"))
        count += 1
    if problems:
        shutil.rmtree(writing, ignore_errors=True)
        listed = "; ".join(problems[:MAX_LISTED])
        more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise UserError(f"{table.name}: {len(problems)} row(s) cannot be used: {listed}{more} (fix or remove them)")
    if not count:
        raise UserError(f"{table.name}: no rows (expected a {text!r} and a {label!r} column with rows under them)")
    if target.is_dir():  # a half-staged folder (its record missing), or another process won
        shutil.rmtree(target, ignore_errors=True)
    os.replace(writing, target)
    done.write_text(json.dumps({**record, "rows": count}))
    return target


def data_folder(path: Path, root: Path, params: Params) -> Path:
    """The folder a run of `params` reads for `--data path`: the path itself, or a table's
    staged folder (columns `texts.text_column`, `texts.label_column`)."""
    if not is_table(path):
        return path
    return stage(path, root, params.texts.text_column, params.texts.label_column)
