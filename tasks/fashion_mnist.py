"""Demo data: Fashion-MNIST written out as PNG class folders.

Classes 0-4 become the pretraining set (`data/source`), classes 5-9 the few-label target
task (`data/raw`, `raw_per_class` images each). The Debian package `dataset-fashion-mnist`
is read when installed; otherwise Keras downloads the data set (needs internet).
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.config import FashionMnistParams

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format): magic, dims, then unsigned bytes."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(directory: Path = DEBIAN_DIR) -> tuple[np.ndarray, np.ndarray]:
    """The 60,000 training images (28x28 uint8) and labels."""
    images = directory / "train-images-idx3-ubyte.gz"
    labels = directory / "train-labels-idx1-ubyte.gz"
    if images.exists() and labels.exists():
        return _read_idx(images), _read_idx(labels)
    import keras

    (x, y), _ = keras.datasets.fashion_mnist.load_data()
    return x, y


def write_class_folders(
    images: np.ndarray,
    labels: np.ndarray,
    classes: tuple[int, ...],
    per_class: int,
    out_dir: Path,
    seed: int,
) -> dict[str, int]:
    """Write `per_class` images of each class as `<out_dir>/<name>/<index>.png`.

    The folder is replaced, so re-running with the same inputs gives identical bytes (and
    the same DVC hash)."""
    rng = np.random.default_rng(seed)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    counts = {}
    for c in classes:
        index = np.flatnonzero(labels == c)
        chosen = np.sort(rng.choice(index, size=min(per_class, len(index)), replace=False))
        folder = out_dir / CLASS_NAMES[c]
        folder.mkdir(parents=True)
        for i in chosen:
            Image.fromarray(images[i]).save(folder / f"{i:05d}.png", optimize=False)
        counts[CLASS_NAMES[c]] = len(chosen)
    return counts


def write_demo_data(source_dir: Path, raw_dir: Path, params: FashionMnistParams) -> dict[str, dict[str, int]]:
    images, labels = load_fashion_mnist()
    return {
        "source": write_class_folders(
            images, labels, params.source_classes, params.source_per_class, source_dir, params.seed
        ),
        "raw": write_class_folders(
            images, labels, params.raw_classes, params.raw_per_class, raw_dir, params.seed + 1
        ),
    }
