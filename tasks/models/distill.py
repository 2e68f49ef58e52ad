"""Knowledge distillation (知识蒸馏): a student's head learns a registered teacher's soft targets.

The way back from an ensemble (模型融合), which costs k times one model at inference: a single
model trained to answer as the ensemble does. The teacher (any registered version) runs once
over the train and val splits; its log-probabilities are kept beside the labels as the targets,
n x (1 + k) floats whatever the image size. The student's head phase (on its frozen features,
tasks.models.finetune.train_head) and phase 2 (tasks.models.distribute) then minimise, per batch,

    (1 - soft_weight) * cross-entropy(label, p_student)
    + soft_weight * T^2 * KL(softmax(log p_teacher / T) || softmax(log p_student / T))

the second term as Keras' own `keras.distillation.LogitsDistillation` computes it (a
log-probability vector is a logit vector up to a constant, which softmax ignores). Keras'
`Distiller` would run the teacher on every batch of every epoch; on frozen features the
teacher's answer never changes, so it runs once here.

Where distillation pays is a transfer set: images without labels (`finetune.distill_unlabelled`,
`datasets.unlabelled`), often far more than the labelled ones, which the teacher labels with
the train split. Their label is `UNLABELLED`: the hard term skips them (it averages over the
labelled rows of a batch) and they learn the soft term alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from tasks.data.datasets import UNLABELLED, Split, restore
from tasks.evaluation.evaluate import predict
from tasks.modality import Encoding

FLOOR = 1e-7  # probabilities are clipped here before the log: a hard 0 has no logit


def targets(teacher: keras.Model, split: Split, encoding: Encoding, description: str) -> np.ndarray:
    """(n, 1 + k) float32: each image's label, then the teacher's log-probabilities for it
    (the split streamed once, batch by batch)."""
    source, order = split.in_run_order(encoding)
    probabilities = predict(teacher, source.batches(encoding, 64, labels=False), len(split), description)
    return pack(split.y, restore(order, probabilities))


def pack(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Labels (n,) and a teacher's probabilities (n, k) as targets: (n, 1 + k) float32."""
    log_p = np.log(np.clip(probabilities, FLOOR, 1.0))
    return np.concatenate([labels[:, None].astype("float32"), log_p.astype("float32")], axis=1)


def loss(temperature: float, soft_weight: float) -> Callable[[Any, Any], Any]:
    """The distillation loss of a softmax head on packed targets (`targets`)."""
    # The loss given as an instance: with its default, the string "kl_divergence", Keras 3.15's
    # LogitsDistillation misses its own KL branch (an isinstance check on a plain function) and
    # applies KL to the raw logits, with no softmax and no T^2 (0 for log-probabilities).
    soft = keras.distillation.LogitsDistillation(temperature=temperature, loss=keras.losses.KLDivergence())

    def distillation(target: Any, probabilities: Any) -> Any:
        labelled = keras.ops.cast(target[:, 0] != UNLABELLED, "float32")  # no label: soft term only
        labels = keras.ops.cast(keras.ops.maximum(target[:, 0], 0), "int32")
        per_row = keras.losses.sparse_categorical_crossentropy(labels, probabilities) * labelled
        hard = keras.ops.sum(per_row) / keras.ops.maximum(keras.ops.sum(labelled), 1.0)
        student = keras.ops.log(keras.ops.clip(probabilities, FLOOR, 1.0))
        return (1.0 - soft_weight) * hard + soft_weight * soft.compute_loss(target[:, 1:], student)

    return distillation


def _label_accuracy(target: Any, probabilities: Any) -> Any:
    # against the label, or the teacher's top class on an unlabelled row of a transfer set
    top = keras.ops.cast(keras.ops.argmax(target[:, 1:], axis=1), "float32")
    truth = keras.ops.where(target[:, 0] == UNLABELLED, top, target[:, 0])
    return keras.metrics.sparse_categorical_accuracy(truth[:, None], probabilities)


def accuracy() -> keras.metrics.Metric:
    """Accuracy against the label column of packed targets, logged as `accuracy` like the
    undistilled head's."""
    return keras.metrics.MeanMetricWrapper(_label_accuracy, name="accuracy")


def objective(params: Any, distilled: bool) -> tuple[Any, Any]:
    """(loss, metric) to compile a phase with (`params`: FinetuneParams): on labels, or on the
    packed targets of a distillation."""
    if not distilled:
        return "sparse_categorical_crossentropy", "accuracy"
    return loss(params.distill_temperature, params.distill_soft_weight), accuracy()
