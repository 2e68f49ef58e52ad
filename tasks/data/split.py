"""Split: train/val/test by content hash.

Each image's split follows from a hash of its bytes (sha256) and a salt, never from its
position or file name, so:
- adding images never moves an existing image to another split (the test set stays clean);
- identical images (same sha256) always land in the same split, even under other names;
- texts that differ only in case and whitespace (the same fold) land in the same split too;
- every class is cut at the same hash thresholds, which stratifies in expectation. A class
  small enough to miss a split entirely gets its lowest-hash training images moved there.
"""

from __future__ import annotations

import hashlib

import pandas as pd

SPLITS = ("train", "val", "test")


def hash_fraction(sha256: str, salt: str) -> float:
    """A uniform number in [0, 1) determined by the content hash and the salt."""
    digest = hashlib.sha256(f"{salt}:{sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(
    manifest: pd.DataFrame, val_fraction: float, test_fraction: float, salt: str
) -> pd.DataFrame:
    """Return the manifest rows with a `split` column (train/val/test). Rows are grouped by their
    content hash, or by the fold hash where the modality gives one (texts: near-duplicates)."""
    if not 0 <= val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"split fractions must leave room for training: val={val_fraction}, test={test_fraction}"
        )
    out = manifest.copy()
    group_by = "fold_sha256" if "fold_sha256" in out.columns else "sha256"
    u = out[group_by].map(lambda s: hash_fraction(s, salt))
    out["split"] = "train"
    out.loc[u < test_fraction + val_fraction, "split"] = "val"
    out.loc[u < test_fraction, "split"] = "test"
    out["_u"] = u

    # Small classes: make sure each split that should exist has at least one distinct image.
    for _label, group in out.groupby("label"):
        distinct = group.drop_duplicates(group_by)
        wanted = [s for s, f in (("test", test_fraction), ("val", val_fraction)) if f > 0]
        if len(distinct) < len(wanted) + 1:
            continue
        for split in wanted:
            if (out.loc[group.index, "split"] == split).any():
                continue
            train = distinct[out.loc[distinct.index, "split"] == "train"].sort_values("_u")
            if len(train) <= 1:
                break
            moved = train[group_by].iloc[0]
            out.loc[group.index[group[group_by] == moved], "split"] = split
    return out.drop(columns="_u")


def split_counts(split_table: pd.DataFrame) -> pd.DataFrame:
    """Images per class and split, for logging."""
    return (
        split_table.groupby(["label", "split"])
        .size()
        .unstack(fill_value=0)
        .reindex(columns=list(SPLITS), fill_value=0)
    )
