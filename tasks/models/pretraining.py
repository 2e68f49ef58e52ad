"""Pretrain: the offline stand-in for ImageNet weights.

A small CNN (`backbones.build_backbone`) is trained from scratch on a source data set (the
demo uses Fashion-MNIST classes 0-4) and scored on its test split; its backbone, frozen, is
what `registry:<name>@<alias>` candidates load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import keras

from tasks.core.config import PretrainParams
from tasks.data.datasets import SplitData
from tasks.evaluation import evaluate
from tasks.modality import Encoding
from tasks.models import finetune
from tasks.models.backbones import build_backbone
from tasks.models.checkpoints import finished as checkpoints_finished


@dataclass
class PretrainResult:
    backbone: keras.Model  # frozen
    history: dict[str, list[float]]  # metric -> per-epoch values
    test: evaluate.TestReport  # the whole classifier on the source test split
    resumed: dict[str, int] = field(default_factory=dict)  # phase -> epochs restored from a checkpoint
    fingerprint: str = ""  # the key of the stage that made it (flows.stages.caching)
    events: Path | None = None  # its TensorBoard event files (tasks.models.checkpoints.events_folder)


def pretrain(
    data: SplitData,
    params: PretrainParams,
    encoding: Encoding,
    checkpoints: Path | None = None,
    events: Path | None = None,
) -> PretrainResult:
    """Train backbone + head on every source class for `params.epochs` epochs (no early stop);
    with `checkpoints`, a killed run resumes from its last finished epoch; TensorBoard event
    files go to `events`."""
    resumed: dict[str, int] = {}
    backbone = build_backbone(encoding.size, params.width, seed=params.seed)  # images: a CNN
    model, history = finetune.train_from_scratch(
        backbone,
        data.train,
        data.val,
        encoding,
        len(data.class_names),
        params.epochs,
        params.learning_rate,
        params.batch_size,
        patience=params.epochs,
        seed=params.seed,
        checkpoints=checkpoints,
        resumed=resumed,
        events=events,
        histogram_freq=params.histogram_freq,
    )
    checkpoints_finished(checkpoints)
    test = data.test.batches(encoding, params.batch_size, labels=False)
    probabilities = evaluate.predict(model, test, len(data.test), "source test")
    backbone.trainable = False
    return PretrainResult(
        backbone,
        history,
        evaluate.report(data.test.y, probabilities, data.class_names),
        resumed,
        events=events,
    )
