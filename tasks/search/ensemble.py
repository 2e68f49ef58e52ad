"""Ensembles (模型融合): the best search trials averaged, weighted by val accuracy, as one Keras
model of built-in layers, kept only when it beats the best single trial on val."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np


def ensemble(members: list[keras.Model], weights: list[float]) -> keras.Model:
    """One model whose output is the weighted mean of `members`' probabilities (weights sum to
    1), from built-in layers only, so it saves, loads and serves as a plain Keras model. A
    member that shares layers with an earlier one (head trials of one backbone share that
    backbone) is copied first: a saved model with one layer object in several members does not
    load (Keras finds its variables once, and the other members' layers empty)."""
    inputs = keras.Input(members[0].input_shape[1:], name="pixels")
    outputs, seen = [], set()
    for i, (member, weight) in enumerate(zip(members, weights, strict=True)):
        if _layer_ids(member) & seen:
            copy = keras.models.clone_model(member)
            copy.set_weights(member.get_weights())
            member = copy
        seen |= _layer_ids(member)
        named = keras.Model(member.input, member.output, name=f"member_{i}")
        outputs.append(keras.layers.Rescaling(weight, name=f"weight_{i}")(named(inputs)))
    return keras.Model(inputs, keras.layers.Add(name="average")(outputs), name="ensemble")


def _layer_ids(model: keras.Model) -> set[int]:
    """Every layer object in `model`, nested models' layers included."""
    found = set()
    for layer in model.layers:
        found.add(id(layer))
        if isinstance(layer, keras.Model):
            found |= _layer_ids(layer)
    return found


def _accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float((probabilities.argmax(axis=1) == labels).mean())


def fuse(
    members: list[keras.Model], probabilities: list[np.ndarray], y_val: np.ndarray, weighted: bool
) -> tuple[keras.Model, float, dict[str, Any] | None]:
    """The best member, or the ensemble of all when it is more accurate on validation (given
    each member's val `probabilities`): (model, its val accuracy, what the ensemble was if kept)."""
    single = [_accuracy(p, y_val) for p in probabilities]
    if len(members) < 2:
        return members[0], single[0], None
    raw = single if weighted and sum(single) > 0 else [1.0] * len(members)
    weights = [w / sum(raw) for w in raw]
    fused = _accuracy(sum(w * p for w, p in zip(weights, probabilities, strict=True)), y_val)
    if fused <= single[0]:
        return members[0], single[0], None
    info = {"weights": weights, "member_val_accuracy": single, "val_accuracy": fused}
    return ensemble(members, weights), fused, info
