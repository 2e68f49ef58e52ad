"""From a split table to arrays: images decoded once, labels as class indices."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.images import load_images


@dataclass
class Split:
    x: np.ndarray  # (n, size, size, 3) uint8
    y: np.ndarray  # (n,) int class indices into class_names
    paths: list[str]  # absolute file paths, same order

    def __len__(self) -> int:
        return len(self.y)


def class_names_of(split_table: pd.DataFrame) -> list[str]:
    """Class names in a fixed order (sorted), as `image_dataset_from_directory` orders them."""
    return sorted(split_table["label"].dropna().unique().tolist())


def load_split(
    split_table: pd.DataFrame, root: Path, split: str, class_names: list[str], image_size: int
) -> Split:
    rows = split_table[split_table["split"] == split]
    index = {name: i for i, name in enumerate(class_names)}
    paths = [str(root / p) for p in rows["path"]]
    return Split(
        x=load_images(paths, image_size),
        y=rows["label"].map(index).to_numpy(dtype=np.int64),
        paths=paths,
    )
