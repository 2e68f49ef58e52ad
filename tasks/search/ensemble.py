"""Ensembles (模型融合): the best search trials averaged, weighted by val accuracy, as one Keras
model of built-in layers, kept only when it really leads the chosen trial on val (`records.leads`);
and the way back (知识蒸馏): an ensemble of several backbones distilled into one (`distil`)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tasks.core.config import FinetuneParams
from tasks.data.datasets import Split, joined
from tasks.models.backbones import input_like
from tasks.search.records import SearchBackbone, leads


def ensemble(members: list[keras.Model], weights: list[float]) -> keras.Model:
    """One model whose output is the weighted mean of `members`' probabilities (weights sum to
    1), from built-in layers only, so it saves, loads and serves as a plain Keras model.

    Members that are a backbone and a head (`build_classifier`: every search trial) run each
    distinct backbone once: head trials of one backbone share it, so an ensemble of k heads
    costs one backbone's forward pass, not k. Member 0's head is the layer `head` (drift and
    warm starts read the best member's backbone and head, `backbones.single`). Any other
    member is nested whole as `member_<i>`, copied first when it shares layers with an
    earlier one (a saved model with one layer object in several members does not load)."""
    inputs = input_like(members[0])
    parts = [_parts(member) for member in members]
    if all(parts) and _disjoint({id(backbone): backbone for backbone, _ in parts}.values()):
        return _on_shared_backbones(inputs, parts, weights)  # type: ignore[arg-type]
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


def _parts(member: keras.Model) -> tuple[keras.Model, keras.layers.Dense] | None:
    """A classifier of `build_classifier` (input, backbone, dropout, head) as (backbone, head);
    None for a model of any other shape."""
    nested = [layer for layer in member.layers if isinstance(layer, keras.Model)]
    rest = [
        layer
        for layer in member.layers
        if not isinstance(layer, (keras.Model, keras.layers.InputLayer, keras.layers.Dropout))
    ]
    if len(nested) == 1 and len(rest) == 1 and isinstance(rest[0], keras.layers.Dense):
        return nested[0], rest[0]
    return None


def _disjoint(models: Any) -> bool:
    """Whether no layer object is in two of `models`."""
    seen: set[int] = set()
    for model in models:
        ids = _layer_ids(model)
        if ids & seen:
            return False
        seen |= ids
    return True


def _on_shared_backbones(
    inputs: Any, parts: list[tuple[keras.Model, keras.layers.Dense]], weights: list[float]
) -> keras.Model:
    """Each distinct backbone called once on `inputs`, each member's head (a copy) on its
    backbone's features, the heads' probabilities weighted and added."""
    features: dict[int, Any] = {}
    names: set[str] = set()
    outputs = []
    for i, ((backbone, dense), weight) in enumerate(zip(parts, weights, strict=True)):
        if id(backbone) not in features:
            called = backbone
            if backbone.name in names:  # a fine-tuned copy keeps its original's name
                called = keras.Model(backbone.input, backbone.output, name=f"{backbone.name}_{len(names)}")
            names.add(called.name)
            features[id(backbone)] = called(inputs, training=False)
        head = keras.layers.Dense.from_config(
            dense.get_config() | {"name": "head" if i == 0 else f"head_{i}"}
        )
        probabilities = head(features[id(backbone)])
        head.set_weights(dense.get_weights())
        outputs.append(keras.layers.Rescaling(weight, name=f"weight_{i}")(probabilities))
    return keras.Model(inputs, keras.layers.Add(name="average")(outputs), name="ensemble")


def _layer_ids(model: keras.Model) -> set[int]:
    """Every layer object in `model`, nested models' layers included."""
    found = set()
    for layer in model.layers:
        found.add(id(layer))
        if isinstance(layer, keras.Model):
            found |= _layer_ids(layer)
    return found


def _correct(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return probabilities.argmax(axis=1) == labels


def fuse(
    members: list[keras.Model],
    probabilities: list[np.ndarray],
    y_val: np.ndarray,
    weighted: bool,
    unless_led: bool = False,
) -> tuple[keras.Model, float, dict[str, Any] | None]:
    """Member 0 (the chosen trial), or the ensemble of all when it really leads member 0 on
    validation (`records.leads`, paired per image), given each member's val `probabilities`:
    (model, its val accuracy, what the ensemble was if kept). `unless_led`: the ensemble is
    kept unless member 0 really leads it (`search.fuse_raw`: members that see different
    features of the input, whose errors differ)."""
    correct = [_correct(p, y_val) for p in probabilities]
    single = [float(c.mean()) for c in correct]
    if len(members) < 2:
        return members[0], single[0], None
    raw = single if weighted and sum(single) > 0 else [1.0] * len(members)
    weights = [w / sum(raw) for w in raw]
    fused = _correct(sum(w * p for w, p in zip(weights, probabilities, strict=True)), y_val)
    if leads(correct[0], fused) if unless_led else not leads(fused, correct[0]):
        return members[0], single[0], None
    info = {"weights": weights, "member_val_accuracy": single, "val_accuracy": float(fused.mean())}
    if unless_led:
        info["rule"] = "fuse_raw"
    return ensemble(members, weights), float(fused.mean()), info


def backbone_passes(model: keras.Model) -> int:
    """How many backbones one forward pass of `model` runs (what it costs to serve): 1 for a
    classifier or an ensemble of heads on one backbone, k for an ensemble of k fine-tunes."""
    return max(1, sum(isinstance(layer, keras.Model) for layer in model.layers))


def distil(
    teacher: keras.Model,
    teacher_val: np.ndarray,
    architecture: SearchBackbone,
    train: Split,
    val: Split,
    num_classes: int,
    params: FinetuneParams,
    unlabelled: Split | None = None,
) -> keras.Model:
    """One copy of `architecture` (its pretrained weights) fine-tuned by the fixed recipe
    (`params`) on the ensemble `teacher`'s soft targets mixed with the labels, both phases
    (tasks.models.distill), the head phase on the architecture's cached frozen features.
    `teacher_val`: the ensemble's val probabilities, which the search already has.
    `unlabelled`: a transfer set the ensemble labels too (its features on disk while it trains)."""
    from tasks.models import distill, features, finetune

    if unlabelled is not None:
        train = joined(train, unlabelled)
    on_train = distill.targets(
        teacher, train, architecture.encoding, f"ensemble on train ({len(train)} images)"
    )
    on_val = distill.pack(val.y, teacher_val)
    backbone = keras.models.clone_model(architecture.model)
    backbone.set_weights(architecture.model.get_weights())
    with tempfile.TemporaryDirectory(prefix="transferops-distil-") as scratch:
        train_features = architecture.train_features
        if unlabelled is not None:  # memory-mapped from a file, whatever the number of images
            train_features = features.features(
                backbone, architecture.name, train, architecture.encoding, Path(scratch), "student features"
            )
        return finetune.finetune(
            backbone,
            train,
            val,
            num_classes,
            params,
            architecture.encoding,
            train_features=train_features,
            val_features=architecture.val_features,
            teacher=(on_train, on_val),
        ).model


def student_kept(teacher_val: np.ndarray, student_val: np.ndarray, y_val: np.ndarray) -> bool:
    """Whether a distilled student replaces its ensemble: when the ensemble does not really lead
    it on val (`records.leads`, paired per image), as the search prefers the simpler of two
    models the better does not lead."""
    return not leads(_correct(teacher_val, y_val), _correct(student_val, y_val))
