"""From a manifest to splits: assigned by content hash, each split a list of files and labels.

A split holds references, never decoded input: its modality's encoding (`Encoding.batches`)
reads and decodes its files when a stage needs them, so a cached split (what Prefect pickles)
is a few bytes per example whatever the example's size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tasks.core import progress
from tasks.core.config import SplitParams
from tasks.core.errors import UserError
from tasks.core.files import printable
from tasks.data import ingest, lineage, split
from tasks.modality import Encoding, Modality

if TYPE_CHECKING:
    import tensorflow as tf


UNLABELLED = -1  # the class index of an image without a label (a distillation transfer set)


@dataclass
class Split:
    """One split of an image folder: `files` relative to `root`, and their class indices."""

    root: Path
    files: list[str]
    y: np.ndarray  # (n,) int class indices into class_names
    sha256: list[str] | None = None  # each file's content hash (from the manifest), same order
    parts: tuple[Path, ...] = ()  # a joined split's folders under `root`: no file leaves its own
    decoders: list[str | None] | None = None  # each file's manifest `decoder` (images), same order

    def digest(self) -> str:
        """Which images, by content when known (a key for what is computed from them)."""
        decoded = [self.decoders] if self.decoders is not None else []  # how: within a grey level
        return lineage.digest([self.files, self.sha256 or str(self.root), self.y.tolist(), *decoded])

    def __len__(self) -> int:
        return len(self.y)

    @property
    def paths(self) -> list[str]:
        """Absolute file paths, in order."""
        return [str(self.root / f) for f in self.files]

    def subset(self, rows: np.ndarray | list[int]) -> Split:
        rows = np.asarray(rows, dtype=np.int64)
        sha = [self.sha256[i] for i in rows] if self.sha256 is not None else None
        decoders = [self.decoders[i] for i in rows] if self.decoders is not None else None
        return Split(self.root, [self.files[i] for i in rows], self.y[rows], sha, self.parts, decoders)

    def batches(
        self, encoding: Encoding, batch_size: int, labels: bool = True, shuffle_seed: int | None = None
    ) -> tf.data.Dataset:
        """The split as a `tf.data` pipeline of model-input batches (with labels by default)."""
        y = self.y if labels else None
        return encoding.batches(
            self.root, self.files, batch_size, y, shuffle_seed, parts=self.parts, decoders=self.decoders
        )

    def in_run_order(self, encoding: Encoding) -> tuple[Split, np.ndarray | None]:
        """The split in the order `encoding` runs a pass in (texts shortest first, so that a
        batch pads little) and that order; (the split, None) where it is as given. `restore`
        puts the pass's rows back in the split's order."""
        order = encoding.order(self.root, self.files, self.parts)
        return (self, None) if order is None else (self.subset(order), order)

    def examples(self, encoding: Encoding) -> np.ndarray:
        """Every example of the split encoded into one array: only for small splits (tests,
        thumbnails, the benchmarks' label subsets), never in the pipeline."""
        return encoding.examples(self.root, self.files, self.parts)

    def preview(self, encoding: Encoding) -> list[Any]:
        """How each example is shown to a person (`Encoding.preview`): only for a few."""
        return encoding.preview(self.root, self.files, self.parts)



def restore(order: np.ndarray | None, rows: np.ndarray) -> np.ndarray:
    """Rows computed on `Split.in_run_order` back in the split's order."""
    if order is None:
        return rows
    out = np.empty_like(rows)
    out[order] = rows
    return out

@dataclass
class SplitData:
    """The train/val/test splits of one image folder."""

    class_names: list[str]
    train: Split
    val: Split
    test: Split
    table: pd.DataFrame  # path, label, sha256, split: which image went where

    @property
    def fingerprint(self) -> str:
        """By content: which image went where."""
        return lineage.digest([lineage.frame_hash(self.table)])

    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in split.SPLITS}

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class: {"train": {"cat": 12, ...}, ...}."""
        return {
            name: {
                c: int(n)
                for c, n in zip(
                    self.class_names,
                    np.bincount(getattr(self, name).y, minlength=len(self.class_names)),
                    strict=True,
                )
            }
            for name in split.SPLITS
        }


def class_names_of(split_table: pd.DataFrame) -> list[str]:
    """Class names in a fixed order (sorted), as `image_dataset_from_directory` orders them."""
    return sorted(split_table["label"].dropna().unique().tolist())


def split_of(split_table: pd.DataFrame, root: Path, name: str, class_names: list[str]) -> Split:
    rows = split_table[split_table["split"] == name]
    index = {label: i for i, label in enumerate(class_names)}
    return Split(
        Path(root),
        rows["path"].tolist(),
        rows["label"].map(index).to_numpy(dtype=np.int64),
        rows["sha256"].tolist() if "sha256" in rows else None,
        decoders=decoders_of(rows),
    )


def decoders_of(rows: pd.DataFrame) -> list[str | None] | None:
    """The manifest rows' `decoder`s (`Split.decoders`), None where the manifest has none."""
    if "decoder" not in rows:
        return None
    return [d if isinstance(d, str) else None for d in rows["decoder"].tolist()]


def prepare_splits(manifest: pd.DataFrame, data_dir: Path, params: SplitParams) -> SplitData:
    """The usable images of a manifest, split by content hash (no pixels are read here)."""
    table = split.assign_splits(
        ingest.usable(manifest), params.val_fraction, params.test_fraction, params.salt
    )
    names = class_names_of(table)
    empty = [s for s in split.SPLITS if not (table["split"] == s).any()]
    if empty:
        raise UserError(
            f"{data_dir}: {len(table)} usable images leave no {' or '.join(empty)} images "
            f"(split.val_fraction {params.val_fraction}, split.test_fraction {params.test_fraction}); "
            "add images (a few per class at least)"
        )
    loaded = {s: split_of(table, data_dir, s, names) for s in split.SPLITS}
    columns = table[["path", "label", "sha256", "split"]].reset_index(drop=True)
    return SplitData(names, loaded["train"], loaded["val"], loaded["test"], columns)


def load_folder(data_dir: Path, params: SplitParams, modality: Modality) -> SplitData:
    """scan -> split, without validation or tracking (benchmarks, notebooks)."""
    return prepare_splits(ingest.scan(data_dir, modality), data_dir, params)


def unlabelled(folder: Path, modality: Modality) -> Split:
    """Every decodable image under `folder`, at any depth, as a split without labels
    (`UNLABELLED`): the transfer set a teacher labels for distillation (tasks.models.distill)."""
    manifest = ingest.scan(folder, modality, anywhere=True)
    rows = ingest.usable(manifest)
    if rows.empty:
        raise UserError(
            f"{printable(str(folder))}: no decodable image in the transfer set (finetune.distill_unlabelled); "
            "point it at a folder of images, or leave it unset"
        )
    skipped = manifest[manifest["error"].notna()]
    if len(skipped):
        first = skipped.iloc[0]
        what = f"{printable(first.path)}: {first.error}"
        progress.say(f"transfer set {printable(str(folder))}: skipped {len(skipped)} file(s) (first: {what})")
    labels = np.full(len(rows), UNLABELLED, np.int64)
    return Split(folder, rows["path"].tolist(), labels, rows["sha256"].tolist(), decoders=decoders_of(rows))


def joined(first: Split, second: Split) -> Split:
    """The images of both splits as one, their files relative to the folder that holds both
    roots; decoding refuses a file that leaves its own split's folder (`parts`)."""
    if first.parts or second.parts:
        raise ValueError("joined: join splits of one folder each")
    parts = (first.root.resolve(), second.root.resolve())
    root = Path(os.path.commonpath(parts))
    files = [
        (split.root.resolve() / f).relative_to(root).as_posix() for split in (first, second) for f in split.files
    ]
    sha = first.sha256 + second.sha256 if first.sha256 is not None and second.sha256 is not None else None
    both = first.decoders is not None and second.decoders is not None
    decoders = first.decoders + second.decoders if both else None
    return Split(root, files, np.concatenate([first.y, second.y]), sha, parts, decoders)
