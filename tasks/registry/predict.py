"""Batch inference with a registered version: files and folders in, one row per file out
(path, label, confidence, error), and for a text version one row per row of a CSV, JSONL or
Parquet table (path `<table>:<row>`), streamed: files are read and predicted `PREDICT_BATCH` at a
time through the version's own pyfunc (the same decoding as serving), and rows are written to
Parquet or CSV as they come, so memory stays flat in the number of files.

The paths are the caller's (the CLI's arguments: trusted); the names found inside folders are
not, and are printed only through `printable`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.core import progress
from tasks.core.errors import UserError
from tasks.core.files import is_ignored
from tasks.registry import versions

COLUMNS = ["path", "label", "confidence", "error"]
FORMATS = (".parquet", ".csv")


def input_files(inputs: list[Path]) -> list[Path]:
    """Each input file, and every file under each input folder (sorted, hidden and system
    files skipped, symlinked folders not followed). A missing input is a UserError."""
    found: list[Path] = []
    missing = [p for p in inputs if not p.exists()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"predict: {missing[0]}: no such file or folder{more}")
    for item in inputs:
        if item.is_dir():
            for folder, dirs, files in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [Path(folder) / f for f in sorted(files) if not is_ignored(Path(f))]
        else:
            found.append(item)
    return found


@dataclass
class Written:
    rows: int = 0
    errors: int = 0
    labels: dict[str, int] = field(default_factory=dict)


class RowWriter:
    """Rows appended batch by batch to a Parquet file (one row group per batch) or a CSV file;
    written to a temporary name and renamed when complete, so a killed run leaves no partial
    file under the name asked for."""

    def __init__(self, out: Path) -> None:
        if out.suffix.lower() not in FORMATS:
            raise UserError(f"predict: --out {out}: write .parquet or .csv")
        self.out, self.partial = out, out.with_name(f".{out.name}.partial")
        self.parquet: Any = None
        self.started = False

    def write(self, frame: pd.DataFrame) -> None:
        if self.out.suffix.lower() == ".csv":
            frame.to_csv(
                self.partial, mode="a" if self.started else "w", header=not self.started, index=False
            )
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            # one schema for every batch: a batch without errors has an all-null error column
            schema = pa.schema(
                [
                    ("path", pa.string()),
                    ("label", pa.string()),
                    ("confidence", pa.float64()),
                    ("error", pa.string()),
                ]
            )
            table = pa.Table.from_pandas(frame[COLUMNS], schema=schema, preserve_index=False)
            if self.parquet is None:
                self.parquet = pq.ParquetWriter(self.partial, schema)
            self.parquet.write_table(table)
        self.started = True

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        if not self.started:
            self.write(pd.DataFrame({c: pd.Series(dtype="object") for c in COLUMNS}))
            if self.parquet is not None:
                self.parquet.close()
        os.replace(self.partial, self.out)


def table_batches(
    pyfunc_model: Any, table: Path, text_column: str
) -> Iterator[tuple[list[str], pd.DataFrame]]:
    """A text version's rows for each row of `table` (tasks/data/tables.py), read a batch at a
    time, named `<table>:<row>` (from 1); a cell that is not a text gets its row's error."""
    from tasks.data import tables

    names: list[str] = []
    cells: list[object] = []

    def flush() -> tuple[list[str], pd.DataFrame]:
        frame = pd.DataFrame({"text": pd.Series(cells, dtype=object)})
        return list(names), pyfunc_model.predict(frame)

    for number, cell, _ in tables.rows(table, text_column, None):
        names.append(f"{table}:{number}")
        cells.append(cell)
        if len(names) == versions.PREDICT_BATCH:
            yield flush()
            names.clear()
            cells.clear()
    if names:
        yield flush()


def batches(
    pyfunc_model: Any, files: list[Path], text_column: str
) -> Iterator[tuple[list[str], pd.DataFrame]]:
    """The version's rows for `files` in order, a batch at a time: a text version reads each
    table file's rows; every other file is one row."""
    from tasks.data import tables

    texts = versions.input_column(pyfunc_model) == "text"
    plain: list[str] = []
    for file in files:
        if texts and tables.is_table(file):
            yield from versions.predict_batches(pyfunc_model, plain)
            plain = []
            yield from table_batches(pyfunc_model, file, text_column)
        else:
            plain.append(str(file))
    yield from versions.predict_batches(pyfunc_model, plain)


def rows(pyfunc_model: Any, files: list[Path], text_column: str = "text") -> Iterator[pd.DataFrame]:
    """(path, label, confidence, error) for each file (or table row), a batch at a time, with a
    progress bar."""
    from tasks.data.tables import is_table

    total = None if any(is_table(f) for f in files) else len(files)  # a table's rows are not counted first
    with progress.counting("predict", total) as advance:
        for chunk, predicted in batches(pyfunc_model, files, text_column):
            frame = pd.DataFrame(
                {
                    "path": chunk,
                    "label": predicted["label"].astype("object"),
                    "confidence": pd.to_numeric(predicted["confidence"], errors="coerce"),
                    "error": predicted["error"].astype("object"),
                }
            )
            advance(len(chunk))
            yield frame


def predict(
    pyfunc_model: Any,
    files: list[Path],
    out: Path | None,
    each: Callable[[dict], None] | None = None,
    text_column: str = "text",
) -> Written:
    """Label `files` (and a text version: each row of a table file's `text_column`) with the
    served model: rows to `out` (Parquet or CSV) and/or to `each`."""
    writer = RowWriter(out) if out is not None else None
    written = Written()
    try:
        for frame in rows(pyfunc_model, files, text_column):
            if writer is not None:
                writer.write(frame)
            for row in frame.to_dict("records"):
                written.rows += 1
                if isinstance(row["error"], str):
                    written.errors += 1
                else:
                    written.labels[row["label"]] = written.labels.get(row["label"], 0) + 1
                if each is not None:
                    each(row)
        if writer is not None:
            writer.close()
    finally:
        if writer is not None and writer.partial.exists():
            writer.partial.unlink()
    return written
