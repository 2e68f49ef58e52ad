"""Drift: have the images moved away from what the champion was trained on?

Both sides are seen through the champion's own backbone (its frozen features, what its head
classifies): a sample of its training split, stored with the version when it was registered
(`reference_features`), against the current training split. The score is the maximum mean
discrepancy (MMD², Gaussian kernel, bandwidth by the median heuristic) with a permutation
p-value: how often shuffling which image came from which side gives an MMD² as large. A small
p-value is evidence that the data changed in what the model sees, not only in its files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tasks.data.datasets import Split
from tasks.modality import Encoding
from tasks.models import backbones, features

REFERENCE_SAMPLES = 500  # training images whose features a registered version keeps
REFERENCE_TAG = "drift_reference"  # version tag: artifact URI of those features (.npy)


@dataclass(frozen=True)
class DriftReport:
    mmd2: float
    p_value: float
    permutations: int
    n_reference: int
    n_current: int
    bandwidth: float
    null: list[float] = field(default_factory=list, repr=False)  # MMD² of each permutation

    def summary(self) -> dict[str, float | int]:
        return {
            "mmd2": self.mmd2,
            "p_value": self.p_value,
            "permutations": self.permutations,
            "n_reference": self.n_reference,
            "n_current": self.n_current,
        }

    def words(self) -> str:
        return (
            f"MMD² {self.mmd2:.4g}, p={self.p_value:.3g} ({self.permutations} permutations, "
            f"{self.n_reference} reference vs {self.n_current} current images)"
        )


def _sample(rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(rows) <= n:
        return rows
    return rows[np.sort(np.random.default_rng(seed).choice(len(rows), n, replace=False))]


def sample_features(
    backbone: object, split: Split, encoding: Encoding, n: int, seed: int, description: str
) -> np.ndarray:
    """Backbone features of a seeded sample of at most `n` images of `split` (only those are decoded)."""
    rows = np.arange(len(split))
    if len(rows) > n:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), n, replace=False))
    return features.features(backbone, "", split.subset(rows), encoding, None, description)


def reference_features(backbone: object, train: Split, encoding: Encoding, seed: int = 0) -> np.ndarray:
    """Backbone features of up to REFERENCE_SAMPLES training images (a seeded sample)."""
    return sample_features(backbone, train, encoding, REFERENCE_SAMPLES, seed, "reference")


def _mmd2(kernel: np.ndarray, first: np.ndarray) -> float:
    """Biased MMD² from the pooled kernel matrix; `first` marks the rows of one side."""
    a, b = kernel[np.ix_(first, first)], kernel[np.ix_(~first, ~first)]
    return float(a.mean() + b.mean() - 2 * kernel[np.ix_(first, ~first)].mean())


def mmd_test(
    reference: np.ndarray, current: np.ndarray, max_samples: int, permutations: int, seed: int = 0
) -> DriftReport:
    """MMD² between the two feature sets and its permutation p-value ((1 + #null >= observed) /
    (1 + permutations), never 0)."""
    x = _sample(np.asarray(reference, dtype="float64"), max_samples, seed)
    y = _sample(np.asarray(current, dtype="float64"), max_samples, seed + 1)
    pooled = np.vstack([x, y])
    squared = np.maximum(
        (pooled**2).sum(1)[:, None] + (pooled**2).sum(1)[None, :] - 2 * pooled @ pooled.T, 0.0
    )
    median = float(np.median(squared[np.triu_indices(len(pooled), k=1)]))
    bandwidth = float(np.sqrt(median / 2)) if median > 0 else 1.0
    kernel = np.exp(-squared / (2 * bandwidth**2))
    first = np.zeros(len(pooled), dtype=bool)
    first[: len(x)] = True
    observed = _mmd2(kernel, first)
    rng = np.random.default_rng(seed)
    null = [_mmd2(kernel, rng.permutation(first)) for _ in range(permutations)]
    p_value = (1 + sum(v >= observed for v in null)) / (1 + permutations)
    return DriftReport(observed, p_value, permutations, len(x), len(y), bandwidth, null)


@dataclass(frozen=True)
class RetrainDecision:
    train: bool
    reason: str


def decide(
    champion: str | None,
    data_changed: bool,
    drift: DriftReport | None,
    alpha: float,
    require_drift: bool,
) -> RetrainDecision:
    """Train or skip. No champion: train. Data unchanged: skip. Changed data: train, unless
    `require_drift` and the drift test finds no significant change (p >= alpha)."""
    if champion is None:
        return RetrainDecision(True, "no champion yet")
    if not data_changed:
        return RetrainDecision(False, f"data unchanged since champion v{champion}")
    if drift is None:
        return RetrainDecision(
            True, f"data changed since champion v{champion} (no drift reference to compare)"
        )
    drifted = drift.p_value < alpha
    verdict = f"drift {drift.words()}: {'significant' if drifted else 'not significant'} at {alpha}"
    if drifted or not require_drift:
        return RetrainDecision(True, f"data changed since champion v{champion}; {verdict}")
    return RetrainDecision(
        False, f"data changed since champion v{champion} but {verdict}; require_drift is on"
    )


def plot(report: DriftReport, reference: np.ndarray, current: np.ndarray, path: Path) -> Path:
    """The permutation null with the observed MMD², and both samples on their first two
    principal components."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.hist(report.null, bins=30, color="#999999", label="permuted")
    left.axvline(report.mmd2, color="#c0392b", label=f"observed (p={report.p_value:.3g})")
    left.set_xlabel("MMD²")
    left.set_ylabel("permutations")
    left.legend()
    pooled = np.vstack([reference, current]).astype("float64")
    centred = pooled - pooled.mean(0)
    components = np.linalg.svd(centred, full_matrices=False)[2][:2].T
    projected = centred @ components
    n = len(reference)
    right.scatter(*projected[:n].T, s=6, alpha=0.5, label="champion's training images")
    right.scatter(*projected[n:].T, s=6, alpha=0.5, label="current images")
    right.set_xlabel("PC 1")
    right.set_ylabel("PC 2")
    right.legend()
    fig.suptitle("Drift on the champion's backbone features")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class Measurement:
    report: DriftReport
    reference: np.ndarray  # the features compared (sampled), for the plot
    current: np.ndarray


def measure(
    model_name: str, champion: str, train: Split, max_samples: int, permutations: int, seed: int = 0
) -> Measurement | None:
    """The drift of the `train` images from version `champion`'s training images, on that
    version's backbone (decoded as that version was trained); None when the version keeps no
    reference sample (registered before drift existed)."""
    import mlflow

    from tasks.registry import versions

    reference_uri = versions.version_tags(model_name, champion).get(REFERENCE_TAG)
    if not reference_uri:
        return None
    reference = np.load(mlflow.artifacts.download_artifacts(artifact_uri=reference_uri))
    served = versions.load_version(model_name, champion)
    classifier, _ = versions.champion_keras_model(served)
    backbone = backbones.backbone_of(classifier)
    current = sample_features(
        backbone, train, versions.encoding_of(served), max_samples, seed + 1, "current features"
    )
    report = mmd_test(reference, current, max_samples, permutations, seed)
    return Measurement(report, _sample(reference, max_samples, seed), current)
