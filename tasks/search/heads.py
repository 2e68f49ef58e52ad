"""Head trials: only a softmax head trains, on a backbone's cached frozen features
(tasks/models/features.py): a grid of learning rates per backbone, through Keras Tuner
(`kt.GridSearch`, its state in the checkpoints folder, so a killed search resumes after its last
finished trial), then a logistic-regression head per backbone (scikit-learn, converged). One
compiled head per backbone serves every grid trial: its weights and optimizer are reset and its
rate set, never rebuilt and traced again. A trial costs seconds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
from keras_tuner.src.engine import tuner_utils

from tasks.core import progress
from tasks.core.config import FinetuneParams, SearchParams
from tasks.data.datasets import Split, restore
from tasks.modality import Encoding
from tasks.models.backbones import build_classifier, build_head, drop_pages
from tasks.models.features import features, row_batches
from tasks.search.records import SearchBackbone, TrialRecord, say


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
            if self.backbones[name].init_head is not None:  # a warm start: from the champion's head
                model.get_layer("head").set_weights(self.backbones[name].init_head)
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
        chosen = self.backbones[hp.get("backbone")]
        x, batch = chosen.train_features, self.finetune.batch_size
        data = row_batches(x, self.y[0], batch, self.finetune.seed)
        val = Validation(chosen.val_features, self.y[1])
        callbacks = [_BestInMemory.of(c) for c in kwargs.pop("callbacks", [])]
        kwargs["shuffle"] = False  # the pipeline reshuffles itself every epoch (Keras warns otherwise)
        return model.fit(
            data,
            epochs=self.finetune.head_epochs,
            steps_per_epoch=-(-len(x) // batch),
            callbacks=[val, *callbacks],
            **kwargs,
        )


class _BestInMemory(tuner_utils.SaveBestEpoch):
    """Keras Tuner's best-epoch checkpoint, kept in memory and written once when the trial
    ends: it writes the file at every better epoch (62 writes in the 4 head trials at 10 labels
    a class, about a quarter of their time)."""

    best: list[np.ndarray] | None = None

    @classmethod
    def of(cls, callback: keras.callbacks.Callback) -> keras.callbacks.Callback:
        if type(callback) is not tuner_utils.SaveBestEpoch:
            return callback
        kept = cls(callback.objective, callback.filepath)
        kept.best_value = callback.best_value
        return kept

    def _save_model(self) -> None:
        self.best = [np.array(v) for v in self.model.get_weights()]

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.best is not None:
            now = self.model.get_weights()
            self.model.set_weights(self.best)
            super()._save_model()
            self.model.set_weights(now)


EAGER_ROWS = 1024  # a split this small is predicted by calling the model: no predict function to trace


def streamed_probabilities(model: keras.Model, encoding: Encoding, split: Split) -> np.ndarray:
    """`model`'s probabilities on the images of `split`, streamed in batches of 64. A small
    split (a val split of a few hundred images) goes through the model called batch by batch:
    tracing Keras' predict function takes longer than the pass (0.3 s a model on 2 cores)."""
    source, order = split.in_run_order(encoding)
    batches = source.batches(encoding, 64, labels=False)
    if len(split) > EAGER_ROWS:
        probabilities = np.asarray(model.predict(batches, verbose=0))
    else:
        probabilities = np.concatenate(
            [np.asarray(model(x, training=False)) for x in batches]
            or [np.zeros((0, model.output_shape[-1]), "float32")]
        )
    return restore(order, probabilities)


def head_log_probabilities(
    features: np.ndarray, kernel: np.ndarray, bias: np.ndarray, chunk: int = 4096
) -> np.ndarray:
    """A softmax head's log-probabilities, log softmax(x W + b), on cached `features` in
    float64, `chunk` rows at a time (a memory-mapped split is never loaded whole)."""
    rows = []
    for i in range(0, len(features), chunk):
        logits = np.asarray(features[i : i + chunk], "float64") @ kernel + bias
        logits -= logits.max(axis=1, keepdims=True)
        rows.append(logits - np.log(np.exp(logits).sum(axis=1, keepdims=True)))
        drop_pages(features)
    return np.concatenate(rows) if rows else np.zeros((0, kernel.shape[1]))


class Validation(keras.callbacks.Callback):
    """`val_loss` and `val_accuracy` in each epoch's logs, from one forward pass on arrays
    (`chunk` rows at a time, so a large val split is never loaded whole)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, chunk: int = 4096) -> None:
        super().__init__()
        self.x, self.y, self.chunk = x, y, chunk

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        chunk, parts = self.chunk, []
        for i in range(0, len(self.x), chunk):
            parts.append(np.asarray(self.model(np.asarray(self.x[i : i + chunk], "float32"), training=False)))
            drop_pages(self.x)
        probabilities = np.concatenate(parts).astype("float64")
        picked = np.clip(probabilities[np.arange(len(self.y)), self.y], 1e-7, 1.0)
        if logs is not None:
            logs["val_loss"] = float(-np.log(picked).mean())
            logs["val_accuracy"] = float((probabilities.argmax(axis=1) == self.y).mean())


class _HeadTuner(kt.GridSearch):
    """Keras Tuner's grid search that keeps each trial's per-epoch curve (`curve.json` in its
    folder: Keras Tuner keeps only the best epoch) and says each finished trial in one line
    (`speak`; a distributed search's chief says them instead). `ran`: the trials it ran."""

    speak = True
    ran = 0

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
        self.ran += 1
        if self.speak:
            say(self.record(trial))


def early_stopping(finetune: FinetuneParams) -> list[keras.callbacks.Callback]:
    return [keras.callbacks.EarlyStopping(monitor="val_loss", patience=finetune.patience)]


def head_tuner(
    heads: _Heads, finetune: FinetuneParams, folder: Path, overwrite: bool, **oracle: Any
) -> _HeadTuner:
    """The grid-search tuner of `heads` kept in `folder/heads` (chief, worker or in-process:
    which one the KERASTUNER_* environment decides)."""
    return _HeadTuner(
        heads,
        objective="val_accuracy",
        seed=finetune.seed,
        directory=str(folder),
        project_name="heads",
        overwrite=overwrite,
        **oracle,
    )


# A logistic-regression head loads its training features whole, as float64. On encoder
# features it is for small labelled sets, where it is the most reliable: above LOGISTIC_BYTES
# (about 43,000 rows of 384 features, 13,000 of 1,280) the streamed softmax heads decide alone,
# so memory stays flat in the number of examples. The raw-input baseline's features are wider
# (a TF-IDF row is 30,522 wide) and it is fitted only while they fit RAW_BASELINE_BYTES.
LOGISTIC_BYTES = 128 * 2**20
RAW_BASELINE_BYTES = 512 * 2**20


def logistic_head(
    backbone: SearchBackbone,
    y: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    seed: int,
    strategy: str = "head",
    c: float = 1.0,
) -> tuple[TrialRecord, list[np.ndarray]]:
    """A converged L2-regularised logistic regression (scikit-learn, L-BFGS) on the frozen
    features, as the weights of the softmax head (the same model: softmax(x W + b)); a class
    missing from the training split gets a bias that never wins. `c`: the inverse penalty."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(backbone.train_features, dtype="float64")
    fitted = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(x, y[0])
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
    for prefix, inputs, labels in (("", x, y[0]), ("val_", backbone.val_features, y[1])):
        log_p = head_log_probabilities(inputs, kernel, bias)
        curve[f"{prefix}loss"] = [float(-log_p[np.arange(len(labels)), labels].mean())]
        curve[f"{prefix}accuracy"] = [float((log_p.argmax(axis=1) == labels).mean())]
    score = curve["val_accuracy"][0]
    values = {"backbone": backbone.name, "strategy": strategy, "solver": "logistic"}
    record = TrialRecord(f"logistic-{backbone.name}", values, score, curve, 1)
    say(record)
    return record, [kernel, bias]


def head_classifier(
    backbone: SearchBackbone, weights: list[np.ndarray], num_classes: int, finetune: FinetuneParams
) -> keras.Model:
    """A head trial as a classifier: its backbone (frozen) and its head."""
    _, dense = build_head(backbone.train_features.shape[1], num_classes, finetune.dropout, finetune.seed)
    classifier = build_classifier(backbone.model, dense, finetune.dropout, finetune.seed)
    dense.set_weights(weights)
    return classifier


def raw_baseline(
    smallest: SearchBackbone, train: Split, val: Split, num_classes: int, finetune: FinetuneParams
) -> tuple[SearchBackbone, tuple[TrialRecord, keras.Model]] | None:
    """The raw-input baseline: a logistic regression on the input's own features
    (`Encoding.baseline`: images at 28 x 28 grey, texts' TF-IDF, fitted to the training split by
    `Encoding.fit_baseline`), taking the smallest backbone's input; None when the training
    split's features would not fit the logistic regression's memory budget."""
    encoding = smallest.encoding
    model = encoding.baseline()
    needed = len(train) * model.output_shape[-1] * 8
    if needed > RAW_BASELINE_BYTES:
        progress.say(
            f"search: no raw-input baseline: {len(train)} training examples' {model.output_shape[-1]} "
            f"features would take {needed / 2**20:,.0f} MB, over the logistic regression's "
            f"{RAW_BASELINE_BYTES / 2**20:,.0f} MB"
        )
        return None
    x = [
        features(model, encoding.baseline_uri, split, encoding, None, f"{what} raw input")
        for split, what in ((train, "train"), (val, "val"))
    ]
    fitted = encoding.fit_baseline(model, x[0])
    backbone = SearchBackbone(encoding.baseline_uri, model, encoding, fitted(x[0]), fitted(x[1]))
    del x
    y = (train.y, val.y)
    record, weights = logistic_head(backbone, y, num_classes, finetune.seed, "raw", encoding.baseline_c)
    return backbone, (record, head_classifier(backbone, weights, num_classes, finetune))


def head_trials(
    backbones: list[SearchBackbone],
    y: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    params: SearchParams,
    finetune: FinetuneParams,
    folder: Path,
    resume: bool,
    elsewhere: Callable[..., Any] | None = None,
) -> list[tuple[TrialRecord, list[np.ndarray]]]:
    """Every (backbone, head learning rate) of the grid trained on frozen features, early
    stopped on val_loss, then a logistic regression head per backbone: (record, head weights of
    its best epoch) per trial, in trial order. `elsewhere` runs the grid on other processes and
    returns the chief's tuner (on a Dask runner: tasks.search.tuner_workers.search)."""
    heads = _Heads(backbones, y, num_classes, params, finetune)
    if elsewhere is None:
        tuner = head_tuner(heads, finetune, folder, overwrite=not resume)
        keras.utils.set_random_seed(finetune.seed)
        tuner.search(callbacks=early_stopping(finetune), verbose=0)
    else:
        tuner = elsewhere(heads, backbones, y, num_classes, params, finetune, folder, resume)
    found = []
    for trial in sorted(tuner.oracle.trials.values(), key=lambda t: t.trial_id):
        if trial.score is None:
            continue
        weights = tuner.load_model(trial).get_layer("head").get_weights()
        found.append((tuner.record(trial), weights))
    # the logistic head on small training splits only (LOGISTIC_BYTES): the softmax heads stream
    small = [b for b in backbones if b.train_features.size * 8 <= LOGISTIC_BYTES]
    return found + [logistic_head(b, y, num_classes, finetune.seed) for b in small]
