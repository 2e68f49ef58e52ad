"""Demo data: Fashion-MNIST written out as PNG class folders.

Classes 0-4 become the pretraining set (`data/source`), classes 5-9 the few-label target
task (`data/raw`, `raw_per_class` images each). The Debian package `dataset-fashion-mnist`
is read when installed; otherwise Keras downloads the data set (needs internet).
"""

from __future__ import annotations

import gzip
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.core.config import FashionMnistParams
from tasks.core.errors import UserError

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


def load_fashion_mnist(directory: Path = DEBIAN_DIR, part: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The 60,000 training images (28x28 uint8) and labels, or with `part="t10k"` the 10,000
    test images (never in the demo's folders: the benchmarks' held-out set)."""
    images = directory / f"{part}-images-idx3-ubyte.gz"
    labels = directory / f"{part}-labels-idx1-ubyte.gz"
    if images.exists() and labels.exists():
        return _read_idx(images), _read_idx(labels)
    import keras

    try:
        train, test = keras.datasets.fashion_mnist.load_data()
        x, y = train if part == "train" else test
    except Exception as e:  # no internet: urllib's error, wrapped by Keras
        raise UserError(
            f"Fashion-MNIST: not in {directory} and the download failed ({type(e).__name__}): "
            "install Debian's copy (apt-get install dataset-fashion-mnist) or connect to the internet"
        ) from e
    return x, y


def write_class_folders(
    images: np.ndarray,
    labels: np.ndarray,
    classes: tuple[int, ...],
    per_class: int,
    out_dir: Path,
    seed: int,
    force: bool = False,
) -> dict[str, int]:
    """Write `per_class` images of each class as `<out_dir>/<name>/<index>.png`.

    Re-running with the same inputs gives identical bytes (and the same DVC hash). An
    existing folder is replaced only when every file in it would be written again unchanged;
    anything else in it (your own images, edits) stops the command, or with `force` the old
    folder is kept beside the new one as `<out_dir>.old-<time>`. Nothing is deleted."""
    rng = np.random.default_rng(seed)
    staging = out_dir.with_name(f".{out_dir.name}.writing")
    if staging.exists():
        shutil.rmtree(staging)  # our own leftover from an interrupted run
    counts = {}
    for c in classes:
        index = np.flatnonzero(labels == c)
        chosen = np.sort(rng.choice(index, size=min(per_class, len(index)), replace=False))
        folder = staging / CLASS_NAMES[c]
        folder.mkdir(parents=True)
        for i in chosen:
            Image.fromarray(images[i]).save(folder / f"{i:05d}.png", optimize=False)
        counts[CLASS_NAMES[c]] = len(chosen)
    replace_folder(staging, out_dir, force)
    return counts


def replace_folder(staging: Path, out_dir: Path, force: bool) -> None:
    """`staging` (demo data just written) becomes `out_dir`. An existing folder is replaced only
    when every file in it was written again unchanged; with `force`, one holding other files is
    kept beside the new one as `<out_dir>.old-<time>`. Nothing is deleted."""
    if out_dir.exists():
        foreign = _files_not_rewritten(out_dir, staging)
        if foreign and not force:
            shutil.rmtree(staging)
            raise FileExistsError(
                f"{out_dir}: holds {len(foreign)} file(s) the demo data would not write "
                f"(first: {foreign[0]}); not replacing it. Move them, or pass --force to keep "
                f"the old folder as {out_dir.name}.old-<time>"
            )
        if foreign:
            out_dir.rename(out_dir.with_name(f"{out_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"))
        else:
            shutil.rmtree(out_dir)
    staging.rename(out_dir)


def _files_not_rewritten(old: Path, new: Path) -> list[str]:
    """Files under `old` that are missing from `new` or differ from it."""
    out = []
    for path in sorted(p for p in old.rglob("*") if p.is_file()):
        twin = new / path.relative_to(old)
        if not twin.is_file() or twin.read_bytes() != path.read_bytes():
            out.append(str(path.relative_to(old)))
    return out


def write_demo_data(
    source_dir: Path, raw_dir: Path, params: FashionMnistParams, force: bool = False
) -> dict[str, dict[str, int]]:
    images, labels = load_fashion_mnist()
    return {
        "source": write_class_folders(
            images, labels, params.source_classes, params.source_per_class, source_dir, params.seed, force
        ),
        "raw": write_class_folders(
            images, labels, params.raw_classes, params.raw_per_class, raw_dir, params.seed + 1, force
        ),
    }
