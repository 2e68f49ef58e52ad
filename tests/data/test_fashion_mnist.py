import gzip

import numpy as np
import pytest

from tasks.data.fashion_mnist import CLASS_NAMES, _read_idx, write_class_folders


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_files_round_trip(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", images)
    np.testing.assert_array_equal(_read_idx(tmp_path / "x.gz"), images)


def test_class_folders_are_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 28, 28), dtype=np.uint8)
    labels = np.repeat(np.arange(4), 10)
    counts = write_class_folders(images, labels, (1, 3), 4, tmp_path / "a", seed=7)
    write_class_folders(images, labels, (1, 3), 4, tmp_path / "b", seed=7)
    assert counts == {CLASS_NAMES[1]: 4, CLASS_NAMES[3]: 4}
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert files_a == files_b and len(files_a) == 8
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files_a)


def test_a_folder_with_other_files_is_never_deleted(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 28, 28), dtype=np.uint8)
    labels = np.repeat(np.arange(4), 10)
    out = tmp_path / "raw"
    write_class_folders(images, labels, (1,), 3, out, seed=1)
    mine = out / CLASS_NAMES[1] / "my-photo.png"
    mine.write_bytes(b"precious")

    with pytest.raises(FileExistsError, match=r"my-photo\.png"):
        write_class_folders(images, labels, (1,), 3, out, seed=1)
    assert mine.read_bytes() == b"precious"

    write_class_folders(images, labels, (1,), 3, out, seed=1, force=True)
    kept = list(tmp_path.glob("raw.old-*"))
    assert len(kept) == 1 and (kept[0] / CLASS_NAMES[1] / "my-photo.png").read_bytes() == b"precious"
    assert not (out / CLASS_NAMES[1] / "my-photo.png").exists()
    assert len(list(out.rglob("*.png"))) == 3


def test_without_the_debian_copy_a_failed_download_is_one_clear_line(tmp_path, monkeypatch):
    import keras

    from tasks.core.errors import UserError
    from tasks.data.fashion_mnist import load_fashion_mnist

    def offline():  # what urllib raises on a machine without internet, as Keras wraps it
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: Name or service not known")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


def test_the_test_file_is_read_apart_from_the_training_file(tmp_path):
    from tasks.data.fashion_mnist import load_fashion_mnist

    for part, value in (("train", 1), ("t10k", 2)):
        write_idx(tmp_path / f"{part}-images-idx3-ubyte.gz", np.full((3, 28, 28), value))
        write_idx(tmp_path / f"{part}-labels-idx1-ubyte.gz", np.full(3, value))
    for part, value in (("train", 1), ("t10k", 2)):
        images, labels = load_fashion_mnist(tmp_path, part)
        assert images.shape == (3, 28, 28) and (images == value).all() and (labels == value).all()
