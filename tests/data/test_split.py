import pandas as pd
import pytest
from conftest import make_image_folder

from tasks.core.config import SplitParams
from tasks.core.errors import UserError
from tasks.data.datasets import load_folder

from tasks.data.ingest import scan
from tasks.data.split import assign_splits, hash_fraction, split_counts
from tasks.modality.pixels import Images


def frame(n_per_class: int, classes=("a", "b"), offset=0) -> pd.DataFrame:
    rows = [
        {"path": f"{c}/{i}.png", "label": c, "sha256": f"{c}-{i}"}
        for c in classes
        for i in range(offset, offset + n_per_class)
    ]
    return pd.DataFrame(rows)


def test_fractions_are_close_and_every_class_is_stratified():
    table = assign_splits(frame(1000), 0.15, 0.15, "s")
    counts = split_counts(table)
    for label in ("a", "b"):
        assert 110 <= counts.loc[label, "test"] <= 190
        assert 110 <= counts.loc[label, "val"] <= 190


def test_adding_images_never_moves_existing_ones():
    before = assign_splits(frame(200), 0.15, 0.15, "s").set_index("path")["split"]
    after = assign_splits(frame(300), 0.15, 0.15, "s").set_index("path")["split"]
    assert (after.loc[before.index] == before).all()


def test_identical_images_share_a_split(image_folder):
    import shutil

    for i in range(12):
        shutil.copy(image_folder / "ant" / f"ant_0_{i:03d}.png", image_folder / "ant" / f"copy{i}.png")
    table = assign_splits(scan(image_folder, Images()), 0.2, 0.2, "s")
    assert (table.groupby("sha256")["split"].nunique() == 1).all()


def test_a_new_salt_moves_assignments_but_keeps_the_fractions():
    one = assign_splits(frame(500), 0.15, 0.15, "one").set_index("path")["split"]
    two = assign_splits(frame(500), 0.15, 0.15, "two").set_index("path")["split"]
    moved = (one != two.loc[one.index]).mean()
    # independent draws: an image keeps its split with p = .7^2 + 2 * .15^2 = 0.535
    assert 0.35 < moved < 0.6
    assert abs((two == "test").mean() - 0.15) < 0.04
    assert hash_fraction("abc", "one") != hash_fraction("abc", "two")


def test_a_small_class_still_gets_val_and_test_images():
    table = assign_splits(frame(4, classes=("tiny",)), 0.01, 0.01, "s")
    assert set(table["split"]) == {"train", "val", "test"}


def test_a_split_without_validation_or_test_images_is_refused(tmp_path):
    make_image_folder(tmp_path, ["cat", "dog"], per_class=1)  # two images: nothing left to hold out
    with pytest.raises(UserError, match=r"2 usable images leave no (train|val|test)"):
        load_folder(tmp_path, SplitParams(), Images(max_pixels=40_000_000))
