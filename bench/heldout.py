"""The data the image benchmarks judge on: labelled sets drawn per seed from Fashion-MNIST's
training file, and the held-out images of the same classes from its test file (1000 a class:
5000 images, never trained on, the same for every arm and seed), with the statistics that
compare two arms on them image by image.

A split's own test images (139 in the demo) leave 0.7 points of accuracy per image; 5000 leave
0.02, and a paired comparison (both arms judged on the same images) removes most of what is
left of the noise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tasks import modality
from tasks.core.config import Params
from tasks.data import fashion_mnist
from tasks.data.datasets import Split, SplitData, load_folder


def held_out(folder: Path, class_names: list[str], classes: tuple[int, ...], per_class: int = 1000) -> Split:
    """The task's classes from Fashion-MNIST's test file, written under `folder`, as a Split in
    the order of `class_names`."""
    images, labels = fashion_mnist.load_fashion_mnist(part="t10k")
    fashion_mnist.write_class_folders(images, labels, classes, per_class, folder, seed=0)
    files = [f"{name}/{p.name}" for name in class_names for p in sorted((folder / name).iterdir())]
    y = [class_names.index(f.split("/")[0]) for f in files]
    return Split(folder, files, np.asarray(y, dtype=np.int64))


def labelled(folder: Path, params: Params, seed: int) -> SplitData:
    """Seed `seed`'s labelled set: `fashion_mnist.raw_per_class` images of each target class
    drawn from the training file (seed 0 draws the demo's own), split as the pipeline splits
    them. Each seed draws anew, so the spread over seeds is the spread a user sees."""
    demo = params.fashion_mnist
    images, labels = fashion_mnist.load_fashion_mnist()
    fashion_mnist.write_class_folders(
        images, labels, demo.raw_classes, demo.raw_per_class, folder, seed=demo.seed + 1 + seed
    )
    return load_folder(folder, params.split, modality.from_params(params))


def paired_difference(a: np.ndarray, b: np.ndarray, replicates: int = 4000, seed: int = 0) -> dict[str, Any]:
    """Mean accuracy of arm `a` minus arm `b` with a 95% paired bootstrap interval.

    `a` and `b` are (seeds, images) arrays of 1 (right) and 0 (wrong), row s of both from seed s
    and column i from the same test image. A replicate draws seeds and images with replacement,
    the same for both arms (that is the pairing), so the interval holds both sources of noise a
    user meets: which labelled set they had (seeds) and which images they will be judged on."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    seeds, images = diff.shape
    rng = np.random.default_rng(seed)
    estimates = np.empty(replicates)
    for start in range(0, replicates, 500):  # 500 replicates at a time: memory stays small
        count = min(500, replicates - start)
        weights = np.stack(
            [np.bincount(rng.integers(0, images, images), minlength=images) for _ in range(count)]
        )
        per_seed = diff @ weights.T / images  # (seeds, count): each seed's difference on each draw
        drawn = rng.integers(0, seeds, (count, seeds))
        estimates[start : start + count] = per_seed[drawn, np.arange(count)[:, None]].mean(axis=1)
    low, high = np.percentile(estimates, [2.5, 97.5])
    return {
        "difference": float(diff.mean()),
        "low": float(low),
        "high": float(high),
        "replicates": replicates,
    }


def correct(predictions: str, y: np.ndarray) -> np.ndarray:
    """1 where a run's predicted class (a string of class digits, one per test image) is right."""
    return (np.frombuffer(predictions.encode(), dtype=np.uint8) - ord("0") == y).astype(np.int8)


def as_digits(probabilities: np.ndarray) -> str:
    """A run's predicted classes as one digit each (fewer than 10 classes): compact in JSON."""
    top = np.asarray(probabilities).argmax(axis=1)
    assert top.max(initial=0) < 10, "one digit a class"
    return "".join(map(str, top.tolist()))
