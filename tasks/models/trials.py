"""The two kinds of trial the strategy search runs (tasks/models/strategy.py).

Head trials train only a softmax head on a backbone's cached frozen features
(tasks/models/features.py): a grid of learning rates per backbone, through Keras Tuner
(`kt.GridSearch`, its state in the checkpoints folder, so a killed search resumes after its last
finished trial). One compiled head per backbone serves every trial: its weights and optimizer
are reset and its rate set, never rebuilt and traced again. A trial costs seconds.

Fine-tune trials train a backbone's top layers (`top-n`) or all of it (`full`) on streamed,
augmented images, each starting from the best head trial's head. They run as one bracket of
successive halving: every configuration trains 1 epoch, the best 1/`factor` go on to `factor`
epochs, and so on up to `max_epochs`, while the epochs they spend together stay within
`budget_epochs`. Each configuration is one model built once and trained on across rungs. The
state after each rung (weights, epochs, curves) is written to the checkpoints folder; a
killed search starts again after its last finished rung (Adam's moments restart).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np

from tasks.core import progress
from tasks.core.config import AugmentParams, FinetuneParams, SearchParams
from tasks.data.datasets import Split
from tasks.data.stream import Pixels
from tasks.models.backbones import build_head
from tasks.models.trainer import Trainer, build_trainer


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
    """A backbone the search may fine-tune: its model, how it takes images, and its frozen
    features of the train and validation splits (memory-mapped from the feature cache)."""

    name: str
    model: keras.Model
    pixels: Pixels
    train_features: np.ndarray
    val_features: np.ndarray


def past(deadline: float | None) -> bool:
    """Whether `deadline` (time.monotonic(); None: none) has passed."""
    return deadline is not None and time.monotonic() > deadline


def say(record: TrialRecord) -> None:
    progress.say(f"search trial {record.trial_id}: {record.words()}  val_accuracy {record.score:.4f}")


def head_rates(params: SearchParams) -> list[float]:
    """`head_trials` learning rates spread log-evenly over `learning_rate_range`."""
    low, high = params.learning_rate_range
    n = params.head_trials
    if n == 1 or low == high:
        return [float(math.sqrt(low * high))]
    return [float(low * (high / low) ** (i / (n - 1))) for i in range(n)]


class _Heads(kt.HyperModel):
    """Heads on frozen features: one compiled model per backbone, reset for each trial."""

    def __init__(
        self,
        backbones: list[SearchBackbone],
        y: tuple[np.ndarray, np.ndarray],
        num_classes: int,
        params: SearchParams,
        finetune: FinetuneParams,
    ) -> None:
        super().__init__()
        self.backbones = {b.name: b for b in backbones}
        self.y, self.num_classes, self.params, self.finetune = y, num_classes, params, finetune
        self.models: dict[str, tuple[keras.Model, list[np.ndarray]]] = {}  # backbone -> model, start

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        name = hp.Choice("backbone", list(self.backbones))
        hp.Fixed("strategy", "head")
        rate = hp.Choice("learning_rate", head_rates(self.params))
        if name not in self.models:
            dim = self.backbones[name].train_features.shape[1]
            model, _ = build_head(dim, self.num_classes, self.finetune.dropout, self.finetune.seed)
            model.compile(
                keras.optimizers.Adam(rate), "sparse_categorical_crossentropy", metrics=["accuracy"]
            )
            model.optimizer.build(model.trainable_variables)
            self.models[name] = (model, [np.array(v.numpy()) for v in model.variables])
        model, initial = self.models[name]
        # every trial from the same start: weights and dropout's seed state as built, a fresh Adam
        for variable, value in zip(model.variables, initial, strict=True):
            variable.assign(value)
        for variable in model.optimizer.variables:
            variable.assign(np.zeros(variable.shape, variable.dtype))
        model.optimizer.learning_rate.assign(rate)
        return model

    def fit(self, hp: kt.HyperParameters, model: keras.Model, **kwargs: Any) -> Any:
        """Epochs over the features from one repeated `tf.data` iterator, validated by one call
        on the whole val split (Keras' `validation_data` builds two iterators and an evaluate
        loop per epoch: most of a head trial's time on a few hundred features)."""
        import tensorflow as tf

        chosen = self.backbones[hp.get("backbone")]
        x, batch = chosen.train_features, self.finetune.batch_size
        labels = tf.constant(np.asarray(self.y[0], dtype=np.int64))

        # Batches gathered by shuffled index from the features (a memmap of the cache: only a
        # batch is read at a time, whatever the number of images).
        @tf.autograph.experimental.do_not_convert
        def rows(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            taken = tf.numpy_function(
                lambda i: np.asarray(x[np.sort(i)], dtype="float32"), [index], tf.float32, stateful=False
            )
            taken.set_shape((None, x.shape[1]))
            return taken, tf.gather(labels, tf.sort(index))

        data = (
            tf.data.Dataset.range(len(x))
            .shuffle(len(x), seed=self.finetune.seed, reshuffle_each_iteration=True)
            .batch(batch)
            .map(rows)
            .prefetch(2)
            .repeat()
        )
        val = _Validation(chosen.val_features, self.y[1])
        callbacks = kwargs.pop("callbacks", [])
        return model.fit(
            data,
            epochs=self.finetune.head_epochs,
            steps_per_epoch=-(-len(x) // batch),
            callbacks=[val, *callbacks],
            **kwargs,
        )


class _Validation(keras.callbacks.Callback):
    """`val_loss` and `val_accuracy` in each epoch's logs, from one forward pass on arrays."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        super().__init__()
        self.x, self.y = x, y

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        chunk = 4096  # rows at a time, so a large val split's features are never loaded whole
        probabilities = np.concatenate(
            [
                np.asarray(self.model(np.asarray(self.x[i : i + chunk], "float32"), training=False))
                for i in range(0, len(self.x), chunk)
            ]
        ).astype("float64")
        picked = np.clip(probabilities[np.arange(len(self.y)), self.y], 1e-7, 1.0)
        if logs is not None:
            logs["val_loss"] = float(-np.log(picked).mean())
            logs["val_accuracy"] = float((probabilities.argmax(axis=1) == self.y).mean())


class _HeadTuner(kt.GridSearch):
    """Keras Tuner's grid search that keeps each trial's per-epoch curve (`curve.json` in its
    folder: Keras Tuner keeps only the best epoch) and says each finished trial in one line."""

    def _try_build(self, hp: kt.HyperParameters) -> keras.Model:
        """The hypermodel's build alone: Keras Tuner's own clears the Keras session and collects
        garbage first (0.3 s a build with TensorFlow loaded), for a model `_Heads` reuses."""
        return self.hypermodel.build(hp)

    def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> list[Any]:
        histories = super().run_trial(trial, *args, **kwargs)
        curve = {k: [float(v) for v in values] for k, values in histories[-1].history.items()}
        (Path(self.get_trial_dir(trial.trial_id)) / "curve.json").write_text(json.dumps(curve))
        return histories

    def record(self, trial: kt.engine.trial.Trial) -> TrialRecord:
        path = Path(self.get_trial_dir(trial.trial_id)) / "curve.json"
        curve = json.loads(path.read_text()) if path.is_file() else {}
        history = {k: v for k, v in curve.items() if k in ("loss", "accuracy", "val_loss", "val_accuracy")}
        score = float(trial.score) if trial.score is not None else float("nan")
        epochs = len(history.get("val_accuracy", []))
        values = dict(trial.hyperparameters.values)
        return TrialRecord(f"head-{trial.trial_id}", values, score, history, epochs)

    def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
        super().on_trial_end(trial)
        say(self.record(trial))


LOGISTIC_BYTES = 512 * 2**20  # features a logistic-regression head may load (it fits in memory)

SIMPLICITY = {"logistic": 0, "head": 1, "top": 2, "full": 3, "scratch": 4}  # simplest first


def simplicity(record: TrialRecord) -> tuple[int, int]:
    """How simple a trial's model is: a logistic head, a head, the fewest unfrozen layers, ..."""
    hp = record.hyperparameters
    kind = "logistic" if hp.get("solver") == "logistic" else hp.get("strategy", "scratch")
    return SIMPLICITY.get(kind, len(SIMPLICITY)), int(hp.get("unfreeze_layers", 0))


def choose(records: list[TrialRecord], n_val: int) -> TrialRecord:
    """The simplest trial whose val accuracy is within two standard errors of the best one's:
    the best of many trials on a few hundred val images is partly the luckiest."""
    leader = max(r.score for r in records)
    margin = 2 * noise(leader, n_val)
    near = [r for r in records if r.score >= leader - margin]
    return min(near, key=lambda r: (simplicity(r), -r.score))


def logistic_head(
    backbone: SearchBackbone, y: tuple[np.ndarray, np.ndarray], num_classes: int, seed: int
) -> tuple[TrialRecord, list[np.ndarray]]:
    """A converged L2-regularised logistic regression (scikit-learn, L-BFGS) on the frozen
    features, as the weights of the softmax head (the same model: softmax(x W + b)); a class
    missing from the training split gets a bias that never wins."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(backbone.train_features, dtype="float64")
    fitted = LogisticRegression(max_iter=3000, random_state=seed).fit(x, y[0])
    kernel = np.zeros((x.shape[1], num_classes), dtype="float32")
    bias = np.full(num_classes, -1e4, dtype="float32")
    classes = fitted.classes_
    if len(classes) == 2:  # binary: P(second) = sigmoid(z) = softmax([0, z])
        bias[classes] = [0.0, fitted.intercept_[0]]
        kernel[:, classes[1]] = fitted.coef_[0]
    else:
        kernel[:, classes] = fitted.coef_.T
        bias[classes] = fitted.intercept_
    curve = {}  # one "epoch": the converged fit, measured like a trained head's epoch
    for prefix, features, labels in (("", x, y[0]), ("val_", backbone.val_features, y[1])):
        logits = np.asarray(features, dtype="float64") @ kernel + bias
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        curve[f"{prefix}loss"] = [float(-log_p[np.arange(len(labels)), labels].mean())]
        curve[f"{prefix}accuracy"] = [float((log_p.argmax(axis=1) == labels).mean())]
    score = curve["val_accuracy"][0]
    values = {"backbone": backbone.name, "strategy": "head", "solver": "logistic"}
    record = TrialRecord(f"logistic-{backbone.name}", values, score, curve, 1)
    say(record)
    return record, [kernel, bias]


def head_trials(
    backbones: list[SearchBackbone],
    y: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    params: SearchParams,
    finetune: FinetuneParams,
    folder: Path,
    resume: bool,
) -> list[tuple[TrialRecord, list[np.ndarray]]]:
    """Every (backbone, head learning rate) of the grid trained on frozen features, early
    stopped on val_loss, then a logistic regression head per backbone: (record, head weights of
    its best epoch) per trial, in trial order."""
    heads = _Heads(backbones, y, num_classes, params, finetune)
    tuner = _HeadTuner(
        heads,
        objective="val_accuracy",
        seed=finetune.seed,
        directory=str(folder),
        project_name="heads",
        overwrite=not resume,
    )
    keras.utils.set_random_seed(finetune.seed)
    tuner.search(
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=finetune.patience)],
        verbose=0,
    )
    found = []
    for trial in sorted(tuner.oracle.trials.values(), key=lambda t: t.trial_id):
        if trial.score is None:
            continue
        weights = tuner.load_model(trial).get_layer("head").get_weights()
        found.append((tuner.record(trial), weights))
    # The logistic head is for small labelled sets, where it is the most reliable; it loads
    # the features whole, so a large split is left to the softmax heads above (they stream).
    small = [b for b in backbones if b.train_features.size * 8 <= LOGISTIC_BYTES]
    return found + [logistic_head(b, y, num_classes, finetune.seed) for b in small]


@dataclass
class _Config:
    """A fine-tune configuration being trained across rungs."""

    record: TrialRecord
    trainer: Trainer
    best: list[np.ndarray] = field(default_factory=list)  # the classifier's weights at its best epoch
    since_best: int = 0  # epochs since its val_accuracy last improved
    stopped: bool = False  # early stopping (patience) ended it


class _Curve(keras.callbacks.Callback):
    """Appends each epoch to the configuration's curve and keeps its best weights."""

    def __init__(self, config: _Config, patience: int) -> None:
        super().__init__()
        self.config, self.patience = config, patience

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        config, logs = self.config, logs or {}
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            config.record.history.setdefault(key, []).append(float(logs.get(key, float("nan"))))
        config.record.epochs += 1
        score = float(logs.get("val_accuracy", float("nan")))
        if not config.best or score > config.record.score:
            config.record.score, config.since_best = score, 0
            config.best = self.model.classifier.get_weights()
        else:
            config.since_best += 1
            if config.since_best >= self.patience:
                config.stopped = self.model.stop_training = True


def configurations(params: SearchParams, head: TrialRecord) -> list[dict[str, Any]]:
    """The fine-tune configurations of the best head's backbone: top-n for each n, then full."""
    found = []
    common = {
        "backbone": head.hyperparameters["backbone"],
        # a logistic head has no rate: the middle of the head trials' range
        "learning_rate": head.hyperparameters.get(
            "learning_rate", math.sqrt(math.prod(params.learning_rate_range))
        )
        * params.finetune_rate,
        "backbone_rate_factor": params.backbone_rate,
    }
    if "top" in params.strategies:
        found += [{"strategy": "top", "unfreeze_layers": n, **common} for n in params.unfreeze_layers]
    if "full" in params.strategies:
        found.append({"strategy": "full", **common})
    return found


def noise(score: float, n_val: int) -> float:
    """One standard error of a val accuracy `score` measured on `n_val` images."""
    return math.sqrt(max(score * (1 - score), 1e-12) / max(n_val, 1))


def fine_tune_rungs(
    backbone: SearchBackbone,
    head: tuple[TrialRecord, list[np.ndarray]],
    train: Split,
    val: Split,
    num_classes: int,
    params: SearchParams,
    finetune: FinetuneParams,
    augment: AugmentParams,
    folder: Path,
    callbacks: list[keras.callbacks.Callback],
    deadline: float | None = None,
) -> list[tuple[TrialRecord, keras.Model]]:
    """Successive halving over `configurations`, each starting from `head`: (record, the
    classifier at its best epoch) per configuration that trained."""
    configs = []
    for values in configurations(params, head[0]):
        models = {backbone.name: backbone.model}
        trainer = build_trainer(values, models, num_classes, finetune, augment, {backbone.name: head[1]})
        name = f"{values['strategy']}-{values['unfreeze_layers']}" if "unfreeze_layers" in values else "full"
        configs.append(_Config(TrialRecord(name, values, float("nan")), trainer))
    if not configs:
        return []
    stream = train.batches(backbone.pixels, finetune.batch_size, shuffle_seed=finetune.seed)
    val_stream = val.batches(backbone.pixels, finetune.batch_size)
    state = folder / "rungs.json"
    done = json.loads(state.read_text()) if state.is_file() else {}
    for config in configs:  # a killed search: back to where its last finished rung left it
        saved = done.get(config.record.trial_id)
        if saved:
            config.record = TrialRecord(**saved["record"])
            config.since_best, config.stopped = saved["since"], saved["stopped"]
            config.trainer.classifier.load_weights(folder / f"{config.record.trial_id}.weights.h5")
            config.best = [
                np.load(folder / f"{config.record.trial_id}.best.npz")[f"w{k}"]
                for k in range(len(config.trainer.classifier.weights))
            ]
    spent = sum(c.record.epochs for c in configs)
    alive, target = [c for c in configs if not c.stopped], 1
    while alive and spent < params.budget_epochs and not past(deadline):
        for config in alive:  # the leader first: what is left of the budget goes to it
            epochs = min(target, config.record.epochs + params.budget_epochs - spent)
            if epochs <= config.record.epochs or past(deadline):
                continue
            progress.say(f"search: {config.record.trial_id} of {backbone.name}, epochs to {epochs}")
            config.trainer.fit(
                stream,
                validation_data=val_stream,
                initial_epoch=config.record.epochs,
                epochs=epochs,
                callbacks=[_Curve(config, finetune.patience), *callbacks],
                shuffle=False,  # the stream reshuffles itself every epoch
                verbose=0,
            )
            spent = sum(c.record.epochs for c in configs)
            say(config.record)
        _save(folder, configs)
        alive = sorted(
            (c for c in alive if not c.stopped and c.record.epochs < params.max_epochs),
            key=lambda c: -c.record.score,
        )
        best = max((c.record.score for c in configs if c.best), default=0.0)
        if head[0].score - best > 2 * noise(head[0].score, len(val)):
            progress.say("search: the head leads every fine-tune trial by more than the val noise")
            break
        alive = alive[: max(1, len(alive) // params.factor)]
        target = min(params.max_epochs, target * params.factor)
    found = []
    for config in configs:
        if config.best:
            config.trainer.classifier.set_weights(config.best)
            found.append((config.record, config.trainer.classifier))
    return found


def _save(folder: Path, configs: list[_Config]) -> None:
    """Each configuration's state after a rung, written whole (temp + rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for config in configs:
        if not config.record.epochs:
            continue
        name = config.record.trial_id
        config.trainer.classifier.save_weights(folder / f"{name}.weights.h5")
        partial = folder / f".{name}.best.npz"
        with partial.open("wb") as f:
            np.savez(f, **{f"w{k}": w for k, w in enumerate(config.best)})
        partial.replace(folder / f"{name}.best.npz")
        state[name] = {"record": vars(config.record), "since": config.since_best, "stopped": config.stopped}
    partial = folder / ".rungs.json"
    partial.write_text(json.dumps(state))
    partial.replace(folder / "rungs.json")
