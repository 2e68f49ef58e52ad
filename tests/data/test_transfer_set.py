"""A distillation's transfer set: a folder of images without labels, at any depth, checked as
any data folder is (what cannot be decoded is skipped), and joined to the train split so that
one stream reads both, each image exactly as its own split would."""

from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder

from tasks.core.config import SplitParams
from tasks.core.errors import UserError
from tasks.data.datasets import UNLABELLED, joined, load_folder, unlabelled
from tasks.core.files import UnsafePathError, read_inside
from tasks.modality.pixels import Pixels
from tasks.modality.pixels import Images


def test_every_decodable_image_at_any_depth_is_taken_without_a_label(tmp_path, monkeypatch, capsys):
    folder = make_image_folder(tmp_path / "photos", ["2024", "2025"], per_class=3, size=16)
    make_image_folder(folder / "2025" / "june", ["day1"], per_class=2, size=16)
    (folder / "loose.png").write_bytes((folder / "2024" / "2024_0_000.png").read_bytes())
    (folder / "2024" / "\x1b[31mbroken.png").write_bytes(b"\x89PNG not really")
    (folder / ".DS_Store").write_bytes(b"junk")
    monkeypatch.setenv("TRANSFEROPS_PROGRESS", "1")

    split = unlabelled(folder, Images(max_pixels=40_000_000))

    said = capsys.readouterr().err
    assert f"transfer set {folder}: skipped 1 file(s) (first: 2024/\\x1b[31mbroken.png: not an image PIL can identify)" in said
    assert "\x1b" not in said

    assert sorted(split.files) == sorted(
        [f"2024/2024_0_00{i}.png" for i in range(3)]
        + [f"2025/2025_0_00{i}.png" for i in range(3)]
        + ["2025/june/day1/day1_0_000.png", "2025/june/day1/day1_0_001.png", "loose.png"]
    )
    assert (split.y == UNLABELLED).all() and len(split.sha256) == len(split) == 9


def test_a_folder_without_an_image_is_one_clear_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match=r"empty: no decodable image in the transfer set"):
        unlabelled(tmp_path / "empty", Images(max_pixels=40_000_000))


def test_a_joined_split_streams_both_splits_images_and_labels(tmp_path):
    data = load_folder(make_image_folder(tmp_path / "data" / "raw", ["a", "b"], per_class=8), SplitParams(), Images(max_pixels=10**8))
    transfer = unlabelled(make_image_folder(tmp_path / "elsewhere" / "photos", ["x"], per_class=5), Images(max_pixels=10**8))

    both = joined(data.train, transfer)

    assert both.root == tmp_path.resolve()
    assert both.files[0] == f"data/raw/{data.train.files[0]}" and both.files[-1].startswith("elsewhere/photos/x/")
    assert np.array_equal(both.y, np.concatenate([data.train.y, np.full(5, UNLABELLED)]))
    assert both.sha256 == data.train.sha256 + transfer.sha256
    pixels = Pixels(16)
    assert both.decoders == data.train.decoders + transfer.decoders and set(both.decoders) == {"png"}
    each = [x for s in (data.train, transfer) for x in s.batches(pixels, 4, labels=False).as_numpy_iterator()]
    streamed = np.concatenate([x for x, _ in both.batches(pixels, 4).as_numpy_iterator()])
    assert np.array_equal(streamed, np.concatenate(each))
    assert both.digest() not in (data.train.digest(), transfer.digest())


def test_no_file_of_a_joined_split_leaves_its_own_folder(tmp_path):
    """The joined split's root holds both folders, and so does anything beside them: a transfer
    image swapped for a link after the scan is refused when it points out of the transfer
    folder, even to a file under the common root."""
    data = load_folder(make_image_folder(tmp_path / "data" / "raw", ["a", "b"], per_class=4), SplitParams(), Images(max_pixels=10**8))
    photos = make_image_folder(tmp_path / "photos", ["x"], per_class=2)
    both = joined(data.train, unlabelled(photos, Images(max_pixels=10**8)))
    secret = tmp_path / "secret.png"
    secret.write_bytes((photos / both.files[-1].removeprefix("photos/")).read_bytes())
    swapped = tmp_path / both.files[-1]
    swapped.unlink()
    swapped.symlink_to(secret)

    with pytest.raises(UnsafePathError, match="resolves outside the data folder"):
        both.examples(Pixels(16))
    with pytest.raises(UnsafePathError, match="outside the folders of its split"):
        read_inside(both.root, "secret.png", both.parts)
    assert len(both.subset([0, len(both) - 2]).examples(Pixels(16))) == 2  # the rest still reads
