"""What a trial of the strategy search leaves (`TrialRecord`), what it runs on
(`SearchBackbone`), and how the kept trial is chosen: the simplest within the val noise of the
best (the best of many trials on a few hundred val images is partly the luckiest)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from tasks.core import progress
from tasks.modality import Encoding


@dataclass
class TrialRecord:
    """One trial (a head trial, a fine-tune configuration, or the scratch baseline): what it
    tried, how it went."""

    trial_id: str
    hyperparameters: dict[str, Any]
    score: float  # its best val_accuracy
    history: dict[str, list[float]] = field(default_factory=dict)  # metric -> value per epoch it ran
    epochs: int = 0

    def words(self) -> str:
        hp = self.hyperparameters
        what = hp.get("strategy", "?")
        if what == "top":
            what += f"-{hp.get('unfreeze_layers')}"
        if "backbone" in hp:
            what += f" of {hp['backbone']}"
        if hp.get("solver") == "logistic":
            return f"{what} (logistic regression)"
        rates = f"lr {hp.get('learning_rate'):.2g}"
        if "backbone_rate_factor" in hp:
            rates += f", backbone x{hp['backbone_rate_factor']:.2g}"
        return f"{what} ({rates})"


@dataclass
class SearchBackbone:
    """A backbone the search may fine-tune: its model, how it takes its input, and its frozen
    features of the train and validation splits (memory-mapped from the feature cache);
    `init_head` ([kernel, bias]: the champion's, for a warm start) is where its head trials start."""

    name: str
    model: keras.Model
    encoding: Encoding
    train_features: np.ndarray
    val_features: np.ndarray
    init_head: list[np.ndarray] | None = None


def past(deadline: float | None) -> bool:
    """Whether `deadline` (time.monotonic(); None: none) has passed."""
    return deadline is not None and time.monotonic() > deadline


class Deadline(keras.callbacks.Callback):
    """Stops training after `deadline` (time.monotonic()), at the end of an epoch."""

    def __init__(self, deadline: float | None) -> None:
        super().__init__()
        self.deadline = deadline

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if past(self.deadline):
            self.model.stop_training = True


def say(record: TrialRecord) -> None:
    progress.say(f"search trial {record.trial_id}: {record.words()}  val_accuracy {record.score:.4f}")


def noise(score: float, n_val: int) -> float:
    """One standard error of a val accuracy `score` measured on `n_val` images."""
    return math.sqrt(max(score * (1 - score), 1e-12) / max(n_val, 1))


SIMPLICITY = {
    "logistic": 0,
    "raw": 1,
    "pixels": 1,
    "head": 2,
    "top": 3,
    "full": 4,
    "scratch": 5,
}  # simplest first


def simplicity(record: TrialRecord) -> tuple[int, int]:
    """How simple a trial's model is: a logistic head on pretrained features, a logistic
    regression on raw pixels, a trained head, the fewest unfrozen layers, ..."""
    hp = record.hyperparameters
    strategy = hp.get("strategy", "scratch")
    kind = "logistic" if hp.get("solver") == "logistic" and strategy == "head" else strategy
    return SIMPLICITY.get(kind, len(SIMPLICITY)), int(hp.get("unfreeze_layers", 0))


# standard errors a lead must exceed to count. At 1 the default gained on fmnist-32 and lost on
# fmnist-224, where head trials' best-epoch val scores beat the logistic head by luck
# (bench/results/next/transfer-choice-z.md)
Z = 2.0


def leads(mine: np.ndarray, theirs: np.ndarray, z: float = Z) -> bool:
    """Whether a model right on the val images `mine` (booleans, one per image) is really
    better than one right on `theirs`, paired per image as McNemar's test pairs them: of the
    images only one of the two gets right, the first's `b` and the second's `c`, b - c exceeds
    z standard errors of the difference, z * sqrt(b + c). Two models that err on the same
    images differ by little noise (5 images better and never worse is a real lead); two that
    err on different ones by more."""
    b, c = int(np.sum(mine & ~theirs)), int(np.sum(theirs & ~mine))
    return b - c > z * math.sqrt(b + c)


def choose(
    records: list[TrialRecord], n_val: int, correct: dict[str, np.ndarray] | None = None
) -> TrialRecord:
    """The simplest trial the best one does not really lead (the standard-error rule, at `Z`
    paired standard errors): the best of many trials on a few hundred val images is partly
    the luckiest.

    With each trial's per-image val correctness (`correct`, by trial id) the comparison is
    paired (`leads`). Without it, the binomial error of the best score on `n_val` images."""
    leader = max(records, key=lambda r: r.score)

    def near(record: TrialRecord) -> bool:
        if correct is not None and record.trial_id in correct and leader.trial_id in correct:
            return not leads(correct[leader.trial_id], correct[record.trial_id])
        return leader.score - record.score <= Z * noise(leader.score, n_val)

    return min((r for r in records if near(r)), key=lambda r: (simplicity(r), -r.score))
