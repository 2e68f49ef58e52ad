"""The model every strategy trial trains: a backbone and a head in one Keras model, with
augmentation on training batches only and the backbone at its own learning rate
(`build_trainer` takes a trial's strategy and rates)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tasks.core.config import FinetuneParams
from tasks.modality import Augmentation
from tasks.models.backbones import glorot, input_like, reseed, weighted_layers


class Trainer(keras.Model):
    """Trains `classifier`: the head at the compiled optimizer's rate, the trainable variables
    of `backbone` with a second Adam at `backbone_rate`, on augmented batches. Only
    `classifier` is kept; the trainer and its augmentation are thrown away after training."""

    def __init__(
        self,
        classifier: keras.Model,
        backbone: keras.Model,
        learning_rate: float,
        backbone_rate: float,
        augment: keras.Layer | None = None,
    ) -> None:
        super().__init__(name="trainer")
        self.classifier, self.backbone, self.augment = classifier, backbone, augment
        self.built = True  # its weights are the classifier's, which exist (checkpoints load into them)
        self.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        self.backbone_optimizer = keras.optimizers.Adam(backbone_rate)
        self.backbone_optimizer.build(backbone.trainable_variables)

    def call(self, inputs: Any, training: bool = False) -> Any:
        return self.classifier(inputs, training=training)

    def train_step(self, data: Any) -> dict[str, Any]:
        x, y = data[0], data[1]
        if self.augment is not None:  # streamed image batches are uint8; the layers compute in float
            x = self.augment(keras.ops.cast(x, "float32"), training=True)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred)
        variables = self.trainable_variables
        gradients = tape.gradient(loss, variables)
        in_backbone = {id(v) for v in self.backbone.trainable_variables}
        pairs = list(zip(gradients, variables, strict=True))
        head = [(g, v) for g, v in pairs if id(v) not in in_backbone]
        body = [(g, v) for g, v in pairs if id(v) in in_backbone]
        self.optimizer.apply([g for g, _ in head], [v for _, v in head])
        if body:
            self.backbone_optimizer.apply([g for g, _ in body], [v for _, v in body])
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred)
        return {m.name: m.result() for m in self.metrics}


def build_trainer(
    values: dict[str, Any],
    pretrained: dict[str, keras.Model],
    num_classes: int,
    finetune: FinetuneParams,
    augment: Augmentation | None,
    heads: dict[str, list[np.ndarray]] | None = None,
) -> Trainer:
    """One trial's model: the backbone (of `pretrained`, by `values["backbone"]`, or the only
    one), its `strategy` (`top` with `unfreeze_layers`, `full` or `scratch`) at `learning_rate`,
    the unfrozen backbone layers at `backbone_rate_factor` times that. Every strategy but
    `scratch` starts from the backbone's head in `heads` (trained on its frozen features), as
    Keras' fine-tuning guide does: a random head would send large gradients into the backbone."""
    name = values.get("backbone") or next(iter(pretrained))
    strategy, learning_rate = values["strategy"], values["learning_rate"]
    unfreeze = values.get("unfreeze_layers", 0)
    factor = values.get("backbone_rate_factor", 1.0)
    seed, source = finetune.seed, pretrained[name]
    keras.utils.set_random_seed(seed)
    backbone = keras.models.clone_model(source)
    if strategy == "scratch":
        reseed(backbone, seed)
    else:
        backbone.set_weights(source.get_weights())
    if strategy == "scratch":  # every layer: a clone keeps each layer's own trainable=False
        for layer in backbone.layers:
            layer.trainable = True
    else:
        weighted = weighted_layers(backbone)
        chosen = {"head": [], "top": weighted[-unfreeze:] if unfreeze > 0 else [], "full": weighted}[strategy]
        backbone.trainable = True
        for layer in backbone.layers:
            layer.trainable = layer in chosen
    inputs = input_like(source)
    # BatchNorm learns its statistics only when trained from scratch (Keras' fine-tuning guide)
    x = backbone(inputs, training=None if strategy == "scratch" else False)
    x = keras.layers.Dropout(finetune.dropout, seed=seed + 2)(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", kernel_initializer=glorot(seed), name="head"
    )(x)
    classifier = keras.Model(inputs, outputs, name="classifier")
    if heads is not None and strategy != "scratch":
        classifier.get_layer("head").set_weights(heads[name])
    layers = augment.layers(seed) if augment is not None else None
    return Trainer(classifier, backbone, learning_rate, learning_rate * factor, layers)
