"""Choose how to fine-tune, not only what: a budgeted Hyperband search (Keras Tuner) on the
validation split over fine-tuning strategies of the backbone `select` chose.

- `head`: the backbone frozen, only a new softmax head trains.
- `top`: the top `unfreeze_layers` layers with weights unfrozen (BatchNorm stays frozen).
- `full`: every layer unfrozen.
- `scratch`: the same architecture with fresh weights, every layer trained (BatchNorm too): the
  baseline that always competes, so plentiful labels can prefer it.

The head learns at `learning_rate`; unfrozen backbone layers of `top`/`full` at
`learning_rate * backbone_rate_factor` (two optimizers, `Trainer`). Augmentation layers
(`augmentation`) act on the training batches only, inside `Trainer.train_step`: the classifier
that is kept and served never contains them. Hyperband gives every trial a few epochs and
trains only the best further, so weak strategies stop early; every trial's hyperparameters and
per-epoch curve are returned for the flow to log (one nested MLflow run each).

Ensembles (模型融合): the best `ensemble_size` trials' probabilities, averaged (weighted by
validation accuracy), are kept instead of the best trial when they score higher on the
validation split. The ensemble is one Keras model (`ensemble`: built-in layers only), so it is
registered and served like any other version.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf

from tasks import progress
from tasks.backbones import glorot, reseed
from tasks.checkpoints import finished
from tasks.config import AugmentParams, FinetuneParams, SearchParams
from tasks.finetune import FinetuneResult
from tasks.finetune import finetune as finetune_fixed

STRATEGIES = ("head", "top", "full", "scratch")


def augmentation(params: AugmentParams, seed: int) -> keras.Sequential | None:
    """The training-time image augmentation `params` asks for, or None (all off)."""
    layers: list[keras.layers.Layer] = []
    if params.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if params.shift > 0:
        layers.append(keras.layers.RandomTranslation(params.shift, params.shift, "nearest", seed=seed + 1))
    if params.rotate > 0:
        layers.append(keras.layers.RandomRotation(params.rotate, "nearest", seed=seed + 2))
    if params.contrast > 0:
        layers.append(keras.layers.RandomContrast(params.contrast, value_range=(0, 255), seed=seed + 3))
    return keras.Sequential(layers, name="augmentation") if layers else None


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
        augment: keras.Sequential | None = None,
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
        if self.augment is not None:
            x = self.augment(x, training=True)
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
    hp: kt.HyperParameters,
    pretrained: keras.Model,
    num_classes: int,
    search: SearchParams,
    finetune: FinetuneParams,
    augment: AugmentParams,
    head: list[np.ndarray] | None = None,
) -> Trainer:
    """One trial's model: the strategy and rates drawn from `hp` (the search space). Every
    strategy but `scratch` starts from `head` (trained on the frozen features), as Keras'
    fine-tuning guide does: a random head would send large gradients into the backbone."""
    strategy = hp.Choice("strategy", list(search.strategies))
    learning_rate = hp.Choice("learning_rate", list(search.learning_rates))
    factor, unfreeze = 1.0, 0
    with hp.conditional_scope("strategy", ["top"]):
        if strategy == "top":
            unfreeze = hp.Choice("unfreeze_layers", list(search.unfreeze_layers))
    with hp.conditional_scope("strategy", ["top", "full"]):
        if strategy in ("top", "full"):
            factor = hp.Choice("backbone_rate_factor", list(search.backbone_rate_factors))
    seed = finetune.seed
    keras.utils.set_random_seed(seed)
    backbone = keras.models.clone_model(pretrained)
    if strategy == "scratch":
        reseed(backbone, seed)
    else:
        backbone.set_weights(pretrained.get_weights())
    weighted = [layer for layer in backbone.layers if layer.weights]
    if strategy == "scratch":  # every layer: a clone keeps each layer's own trainable=False
        for layer in backbone.layers:
            layer.trainable = True
    else:
        chosen = {
            "head": [],
            "top": [w for w in weighted if not isinstance(w, keras.layers.BatchNormalization)][-unfreeze:],
            "full": [w for w in weighted if not isinstance(w, keras.layers.BatchNormalization)],
        }[strategy]
        backbone.trainable = True
        for layer in backbone.layers:
            layer.trainable = layer in chosen
    inputs = keras.Input(pretrained.input_shape[1:], name="pixels")
    # BatchNorm learns its statistics only when trained from scratch (Keras' fine-tuning guide)
    x = backbone(inputs, training=None if strategy == "scratch" else False)
    x = keras.layers.Dropout(finetune.dropout, seed=seed + 2)(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", kernel_initializer=glorot(seed), name="head"
    )(x)
    classifier = keras.Model(inputs, outputs, name="classifier")
    if head is not None and strategy != "scratch":
        classifier.get_layer("head").set_weights(head)
    return Trainer(classifier, backbone, learning_rate, learning_rate * factor, augmentation(augment, seed))


@dataclass
class TrialRecord:
    """One Hyperband trial: what it tried, how it went, epoch by epoch."""

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
        rates = f"lr {hp.get('learning_rate'):g}"
        if "backbone_rate_factor" in hp:
            rates += f", backbone x{hp['backbone_rate_factor']:g}"
        return f"{what} ({rates})"


@dataclass
class SearchResult:
    model: keras.Model  # the chosen classifier (or ensemble), trained
    best: TrialRecord
    trials: list[TrialRecord]
    val_accuracy: float  # of `model`, measured again on the validation split
    ensemble: dict[str, Any] | None = None  # members, weights, val accuracy: when it was kept

    def explanation(self) -> str:
        by_strategy: dict[str, float] = {}
        for trial in self.trials:
            name = trial.hyperparameters.get("strategy", "?")
            by_strategy[name] = max(by_strategy.get(name, 0.0), trial.score)
        ranked = ", ".join(f"{k} {v:.4f}" for k, v in sorted(by_strategy.items(), key=lambda kv: -kv[1]))
        words = (
            f"{self.best.words()} won {len(self.trials)} Hyperband trials on val_accuracy "
            f"{self.best.score:.4f} (best per strategy: {ranked})"
        )
        if self.ensemble:
            words += (
                f"; an ensemble of the best {len(self.ensemble['members'])} scored "
                f"{self.ensemble['val_accuracy']:.4f} on val and is kept"
            )
        return words


def ensemble(members: list[keras.Model], weights: list[float]) -> keras.Model:
    """One model whose output is the weighted mean of `members`' probabilities (weights sum to
    1), from built-in layers only, so it saves, loads and serves as a plain Keras model."""
    inputs = keras.Input(members[0].input_shape[1:], name="pixels")
    outputs = [
        keras.layers.Rescaling(weight, name=f"weight_{i}")(
            keras.Model(member.input, member.output, name=f"member_{i}")(inputs)
        )
        for i, (member, weight) in enumerate(zip(members, weights, strict=True))
    ]
    return keras.Model(inputs, keras.layers.Add(name="average")(outputs), name="ensemble")


def _accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float((probabilities.argmax(axis=1) == labels).mean())


def fuse(
    members: list[keras.Model], x_val: np.ndarray, y_val: np.ndarray, weighted: bool
) -> tuple[keras.Model, float, dict[str, Any] | None]:
    """The best member, or the ensemble of all when it is more accurate on validation:
    (model, its val accuracy, what the ensemble was if kept)."""
    probabilities = [np.asarray(m.predict(x_val, verbose=0)) for m in members]
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


class _Tuner(kt.Hyperband):
    """Hyperband that says each finished trial in one line."""

    def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
        super().on_trial_end(trial)
        record = _record(trial)
        progress.say(f"search trial {record.trial_id}: {record.words()}  val_accuracy {record.score:.4f}")


def _record(trial: kt.engine.trial.Trial) -> TrialRecord:
    history: dict[str, list[float]] = {}
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if trial.metrics.exists(name):
            observations = sorted(trial.metrics.get_history(name), key=lambda o: o.step)
            history[name] = [float(np.mean(o.value)) for o in observations]
    values = {k: v for k, v in trial.hyperparameters.values.items() if not k.startswith("tuner/")}
    score = trial.score if trial.score is not None else float("nan")
    return TrialRecord(trial.trial_id, values, float(score), history, len(history.get("val_accuracy", [])))


def search(
    pretrained: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    params: SearchParams,
    finetune: FinetuneParams,
    augment: AugmentParams,
    checkpoints: Path | None = None,
    events: Path | None = None,
) -> SearchResult:
    """Hyperband over the strategies on (train, val); returns the best trial's classifier.
    The tuner keeps its state and trial checkpoints in `checkpoints/search` (a killed search
    resumes after its last finished trial; removed when done) or in a temporary folder;
    TensorBoard event files of every trial go to `events/search/<trial>`."""
    keras.utils.set_random_seed(finetune.seed)
    # the head on cached frozen features first (phase 1 of the fixed recipe: seconds)
    warm = finetune_fixed(
        pretrained, train, val, num_classes, finetune.model_copy(update={"finetune_epochs": 0})
    )
    head = warm.model.get_layer("head").get_weights()
    if checkpoints is not None:
        folder = checkpoints / "search"
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="transferops-search-"))
    try:
        tuner = _Tuner(
            hypermodel=lambda hp: build_trainer(hp, pretrained, num_classes, params, finetune, augment, head),
            objective="val_accuracy",
            max_epochs=params.max_epochs,
            factor=params.factor,
            hyperband_iterations=params.iterations,
            seed=finetune.seed,
            directory=str(folder),
            project_name="search",
            overwrite=checkpoints is None,
        )
        x_train, y_train = train[0].astype("float32"), train[1]
        x_val, y_val = val[0].astype("float32"), val[1]
        callbacks: list[keras.callbacks.Callback] = [
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=finetune.patience)
        ]
        if events is not None:  # Keras Tuner gives each trial its own subfolder
            callbacks.append(keras.callbacks.TensorBoard(str(events / "search"), write_graph=False))
        tuner.search(
            x_train,
            y_train,
            validation_data=(x_val, y_val),
            batch_size=finetune.batch_size,
            callbacks=callbacks,
            verbose=0,
        )
        trials = [_record(t) for t in tuner.oracle.trials.values() if t.score is not None]
        best_trials = tuner.oracle.get_best_trials(params.ensemble_size)
        members = [trainer.classifier for trainer in tuner.get_best_models(params.ensemble_size)]
    except BaseException:
        if checkpoints is None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    finished(checkpoints)
    model, val_accuracy, fused = fuse(members, x_val, y_val, params.ensemble_weighted)
    if fused is not None:
        fused["members"] = [_record(t).words() for t in best_trials]
    trials.sort(key=lambda t: int(t.trial_id))
    return SearchResult(model, _record(best_trials[0]), trials, val_accuracy, fused)


def as_finetune_result(found: SearchResult, events: Path | None = None) -> FinetuneResult:
    """A search as the finetune stage's result: the chosen classifier, the winning trial's
    curve (phase `search`), and every trial in `search` (for the flow to log)."""
    return FinetuneResult(
        model=found.model,
        history={"search": found.best.history},
        events=events,
        search={
            "explanation": found.explanation(),
            "chosen": found.best.hyperparameters,
            "val_accuracy": found.val_accuracy,
            "ensemble": found.ensemble,
            "trials": [vars(t) for t in found.trials],
        },
    )
