"""From a manifest to arrays: splits assigned, images decoded once, labels as class indices."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.data import ingest
from tasks.data import lineage
from tasks.data import split
from tasks.core.config import SplitParams
from tasks.data.images import load_images


@dataclass
class Split:
    x: np.ndarray  # (n, size, size, 3) uint8
    y: np.ndarray  # (n,) int class indices into class_names
    paths: list[str]  # absolute file paths, same order

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class SplitData:
    """The decoded train/val/test splits of one image folder."""

    class_names: list[str]
    train: Split
    val: Split
    test: Split
    table: pd.DataFrame  # path, label, sha256, split: which image went where

    @property
    def fingerprint(self) -> str:
        """By content: which image went where, decoded to which shape."""
        return lineage.digest([lineage.frame_hash(self.table), list(self.train.x.shape[1:])])

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


def load_split(
    split_table: pd.DataFrame, root: Path, name: str, class_names: list[str], image_size: int
) -> Split:
    rows = split_table[split_table["split"] == name]
    index = {label: i for i, label in enumerate(class_names)}
    paths = [str(root / p) for p in rows["path"]]
    return Split(
        x=load_images([ingest.read_inside(root, p) for p in rows["path"]], image_size),
        y=rows["label"].map(index).to_numpy(dtype=np.int64),
        paths=paths,
    )


def prepare_splits(manifest: pd.DataFrame, data_dir: Path, params: SplitParams, image_size: int) -> SplitData:
    """The usable images of a manifest, split by content hash and decoded once per split."""
    table = split.assign_splits(
        ingest.usable(manifest), params.val_fraction, params.test_fraction, params.salt
    )
    names = class_names_of(table)
    loaded = {s: load_split(table, data_dir, s, names, image_size) for s in split.SPLITS}
    columns = table[["path", "label", "sha256", "split"]].reset_index(drop=True)
    return SplitData(names, loaded["train"], loaded["val"], loaded["test"], columns)


def load_folder(data_dir: Path, params: SplitParams, image_size: int, max_pixels: int) -> SplitData:
    """scan -> split -> decode, without validation or tracking (benchmarks, notebooks)."""
    return prepare_splits(ingest.scan(data_dir, max_pixels=max_pixels), data_dir, params, image_size)
