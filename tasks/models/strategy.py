"""Choose how to fine-tune, not only what: a budgeted Hyperband search (Keras Tuner) on the
validation split over fine-tuning strategies of the backbones `select` kept (LogME's top k).

- `head`: the backbone frozen, only a new softmax head trains.
- `top`: the top `unfreeze_layers` layers with weights unfrozen (BatchNorm stays frozen).
- `full`: every layer unfrozen.
- `scratch`: the same architecture with fresh weights, every layer trained (BatchNorm too): the
  baseline that always competes, so plentiful labels can prefer it. It is not a Hyperband
  trial: a fresh network cannot compete after the first rung's few epochs, so Hyperband would
  always stop it early. It trains once, on its own budget (`scratch_epochs`, early stopping on
  val_accuracy after `scratch_patience`), and then competes on the same validation score.

The head learns at `learning_rate`; unfrozen backbone layers of `top`/`full` at
`learning_rate * backbone_rate_factor` (two optimizers, `trainer.Trainer`); both are drawn
log-uniformly from their ranges. The space must be continuous: Keras Tuner ends the whole
search once it cannot draw a configuration it has not tried, which in a small grid happened
before Hyperband's first rung was promoted. When `select` kept several backbones, the backbone
is one more hyperparameter. Augmentation layers (`trainer.augmentation`) act on the training
batches only, inside `Trainer.train_step`: the classifier that is kept and served never
contains them. Hyperband gives every trial a few epochs and
trains only the best further, so weak strategies stop early; every trial's hyperparameters and
per-epoch curve are returned for the flow to log (one nested MLflow run each).

Ensembles (模型融合): the best `ensemble_size` trials' probabilities, averaged (weighted by
validation accuracy), are kept instead of the best trial when they score higher on the
validation split. The ensemble is one Keras model (`ensemble.ensemble`: built-in layers
only), so it is registered and served like any other version.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np

from tasks.core import progress
from tasks.core.config import AugmentParams, FinetuneParams, SearchParams
from tasks.core.errors import UserError
from tasks.models.backbones import extract_features
from tasks.models.checkpoints import finished
from tasks.models.ensemble import fuse
from tasks.models.finetune import FinetuneResult, train_head
from tasks.models.trainer import build_trainer

STRATEGIES = ("head", "top", "full", "scratch")


@dataclass
class TrialRecord:
    """One trial (a Hyperband trial, or the scratch baseline): what it tried, how it went."""

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
        rates = f"lr {hp.get('learning_rate'):.2g}"
        if "backbone_rate_factor" in hp:
            rates += f", backbone x{hp['backbone_rate_factor']:.2g}"
        return f"{what} ({rates})"


@dataclass
class SearchResult:
    model: keras.Model  # the chosen classifier (or ensemble), trained
    best: TrialRecord
    trials: list[TrialRecord]  # Hyperband's in order, then the scratch baseline's
    val_accuracy: float  # of `model`, measured again on the validation split
    ensemble: dict[str, Any] | None = None  # members, weights, val accuracy: when it was kept
    backbone: str = ""  # the name (in `search`'s `pretrained`) of the backbone `best` fine-tuned

    def explanation(self) -> str:
        by_strategy: dict[str, float] = {}
        for trial in self.trials:
            name = trial.hyperparameters.get("strategy", "?")
            by_strategy[name] = max(by_strategy.get(name, 0.0), trial.score)
        ranked = ", ".join(f"{k} {v:.4f}" for k, v in sorted(by_strategy.items(), key=lambda kv: -kv[1]))
        hyperband = sum(t.trial_id != SCRATCH for t in self.trials)
        scratch = next((t for t in self.trials if t.trial_id == SCRATCH), None)
        words = (
            f"{self.best.words()} won on val_accuracy {self.best.score:.4f} "
            f"over {hyperband} Hyperband trials"
            + (f" and the scratch baseline ({scratch.epochs} epochs)" if scratch else "")
            + f" (best per strategy: {ranked})"
        )
        if self.ensemble:
            words += (
                f"; an ensemble of the best {len(self.ensemble['members'])} scored "
                f"{self.ensemble['val_accuracy']:.4f} on val and is kept"
            )
        return words


SCRATCH = "scratch"  # the scratch baseline's trial id


class _Oracle(kt.oracles.HyperbandOracle):
    """Hyperband that starts no trial after `deadline` (time.monotonic(); None: no deadline)."""

    deadline: float | None = None

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        if self.deadline is not None and time.monotonic() > self.deadline:
            return {"status": kt.engine.trial.TrialStatus.STOPPED, "values": None}
        return super().populate_space(trial_id)


class _Tuner(kt.Hyperband):
    """Hyperband (with a deadline) that says each finished trial in one line."""

    def __init__(self, params: SearchParams, seed: int, deadline: float | None, **kwargs: Any) -> None:
        oracle = _Oracle(  # all kt.Hyperband's own __init__ does is build its oracle
            objective="val_accuracy",
            max_epochs=params.max_epochs,
            factor=params.factor,
            hyperband_iterations=params.iterations,
            seed=seed,
        )
        oracle.deadline = deadline
        kt.Tuner.__init__(self, oracle=oracle, **kwargs)

    def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> list[Any]:
        """Keras Tuner keeps only each trial's best epoch; its per-epoch curve (a promoted
        trial's continues its parent's) goes to `curve.json` in the trial's folder."""
        histories = super().run_trial(trial, *args, **kwargs)
        curve = {k: [float(v) for v in values] for k, values in histories[-1].history.items()}
        values = trial.hyperparameters.values
        if "tuner/trial_id" in values:
            parent = self._curve(values["tuner/trial_id"])
            curve = {k: parent.get(k, [])[: values["tuner/initial_epoch"]] + v for k, v in curve.items()}
        (Path(self.get_trial_dir(trial.trial_id)) / "curve.json").write_text(json.dumps(curve))
        return histories

    def _curve(self, trial_id: str) -> dict[str, list[float]]:
        path = Path(self.get_trial_dir(trial_id)) / "curve.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def record(self, trial: kt.engine.trial.Trial) -> TrialRecord:
        """The trial as a TrialRecord: its hyperparameters, best val_accuracy and curve."""
        history = {
            k: v
            for k, v in self._curve(trial.trial_id).items()
            if k in ("loss", "accuracy", "val_loss", "val_accuracy")
        }
        values = {k: v for k, v in trial.hyperparameters.values.items() if not k.startswith("tuner/")}
        score = trial.score if trial.score is not None else float("nan")
        return TrialRecord(
            trial.trial_id, values, float(score), history, len(history.get("val_accuracy", []))
        )

    def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
        super().on_trial_end(trial)
        say(self.record(trial))


class Deadline(keras.callbacks.Callback):
    """Stops training after `deadline` (time.monotonic()), at the end of an epoch."""

    def __init__(self, deadline: float | None) -> None:
        super().__init__()
        self.deadline = deadline

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.model.stop_training = True


def say(record: TrialRecord) -> None:
    progress.say(f"search trial {record.trial_id}: {record.words()}  val_accuracy {record.score:.4f}")


def train_scratch(
    architecture: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    params: SearchParams,
    finetune: FinetuneParams,
    augment: AugmentParams,
    backup: Path | None = None,
    events: Path | None = None,
    deadline: float | None = None,
) -> tuple[TrialRecord, keras.Model]:
    """The scratch baseline: `architecture` with fresh weights, every layer trained on augmented
    batches for up to `scratch_epochs`, stopped `scratch_patience` epochs after val_accuracy last
    improved; the classifier of its best epoch. `backup` makes a killed run resume at its last
    epoch (Keras BackupAndRestore; the best-epoch memory restarts from there)."""
    hp = kt.HyperParameters()
    hp.Fixed("strategy", SCRATCH)
    hp.Fixed("learning_rate", params.scratch_learning_rate)
    trainer = build_trainer(hp, {SCRATCH: architecture}, num_classes, params, finetune, augment)
    callbacks: list[keras.callbacks.Callback] = [  # Keras restores the best epoch at the end, stopped or not
        keras.callbacks.EarlyStopping(
            monitor="val_accuracy", patience=params.scratch_patience, restore_best_weights=True
        ),
        Deadline(deadline),
    ]
    if backup is not None:
        callbacks.append(keras.callbacks.BackupAndRestore(str(backup)))
    if events is not None:
        callbacks.append(keras.callbacks.TensorBoard(str(events), write_graph=False))
    fitted = trainer.fit(
        train[0].astype("float32"),
        train[1],
        validation_data=(val[0].astype("float32"), val[1]),
        epochs=params.scratch_epochs,
        batch_size=finetune.batch_size,
        callbacks=callbacks,
        verbose=0,
    )
    history = {k: [float(v) for v in values] for k, values in fitted.history.items()}
    epochs = len(history.get("val_accuracy", []))
    score = max(history["val_accuracy"]) if epochs else float("nan")
    record = TrialRecord(SCRATCH, dict(hp.values), score, history, epochs)
    say(record)
    return record, trainer.classifier


def warm_heads(
    pretrained: dict[str, keras.Model],
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    finetune: FinetuneParams,
) -> dict[str, list[np.ndarray]]:
    """Each backbone's head, trained on its cached frozen features (phase 1 of the fixed
    recipe: seconds)."""
    keras.utils.set_random_seed(finetune.seed)
    heads = {}
    for name, backbone in pretrained.items():
        backbone.trainable = False
        f_train, f_val = (
            extract_features(
                backbone, (x[i : i + 256] for i in range(0, len(x), 256)), len(x), f"{name} {what}"
            )
            for x, what in ((train[0], "train features"), (val[0], "val features"))
        )
        heads[name] = train_head((f_train, train[1]), (f_val, val[1]), num_classes, finetune).get_weights()
    return heads


def search(
    pretrained: dict[str, keras.Model],
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    params: SearchParams,
    finetune: FinetuneParams,
    augment: AugmentParams,
    checkpoints: Path | None = None,
    events: Path | None = None,
    deadline: float | None = None,
) -> SearchResult:
    """Hyperband over the transfer strategies of every backbone in `pretrained` (name ->
    backbone, best first: the scratch baseline uses the first one's architecture), then the
    scratch baseline if `params.strategies` has it; the best on val (or the ensemble of the
    best `ensemble_size`) is returned. The tuner keeps its state and trial checkpoints in
    `checkpoints/search` (a killed search resumes after its last finished trial; removed when
    done) or in a temporary folder; TensorBoard event files of every trial go to
    `events/search/<trial>`. `deadline` (time.monotonic()) starts no trial and ends every
    training after it: for benchmarks that give each arm the same time."""
    keras.utils.set_random_seed(finetune.seed)
    transfer = tuple(s for s in params.strategies if s != SCRATCH)
    if checkpoints is not None:
        folder = checkpoints / "search"
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="transferops-search-"))
    x_train, y_train = train[0].astype("float32"), train[1]
    x_val, y_val = val[0].astype("float32"), val[1]
    records: list[TrialRecord] = []
    ranked: list[tuple[TrialRecord, keras.Model]] = []
    try:
        if transfer:
            heads = warm_heads(pretrained, train, val, num_classes, finetune)
            space = params.model_copy(update={"strategies": transfer})
            tuner = _Tuner(
                params,
                finetune.seed,
                deadline,
                hypermodel=lambda hp: build_trainer(
                    hp, pretrained, num_classes, space, finetune, augment, heads
                ),
                directory=str(folder),
                project_name="search",
                overwrite=checkpoints is None,
            )
            callbacks: list[keras.callbacks.Callback] = [
                keras.callbacks.EarlyStopping(monitor="val_loss", patience=finetune.patience),
                Deadline(deadline),
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
            records = [tuner.record(t) for t in tuner.oracle.trials.values() if t.score is not None]
            records.sort(key=lambda t: int(t.trial_id))
            best = tuner.oracle.get_best_trials(params.ensemble_size)
            ranked = [(tuner.record(t), tuner.load_model(t).classifier) for t in best]
        if SCRATCH in params.strategies:
            baseline = train_scratch(
                next(iter(pretrained.values())),
                train,
                val,
                num_classes,
                params,
                finetune,
                augment,
                backup=folder / SCRATCH,
                events=events / "search" / SCRATCH if events is not None else None,
                deadline=deadline,
            )
            records.append(baseline[0])
            ranked.append(baseline)
    except BaseException:
        if checkpoints is None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    finished(checkpoints)
    if not ranked:
        raise UserError("the strategy search finished no trial before its deadline: give it more time")
    ranked.sort(key=lambda pair: -pair[0].score)  # stable: a tie keeps Hyperband's order first
    top = ranked[: params.ensemble_size]
    model, val_accuracy, fused = fuse([m for _, m in top], x_val, y_val, params.ensemble_weighted)
    if fused is not None:
        fused["members"] = [record.words() for record, _ in top]
    best_record = top[0][0]
    backbone = best_record.hyperparameters.get("backbone", next(iter(pretrained)))
    return SearchResult(model, best_record, records, val_accuracy, fused, backbone)


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
            "backbone": found.backbone,
            "val_accuracy": found.val_accuracy,
            "ensemble": found.ensemble,
            "trials": [vars(t) for t in found.trials],
        },
    )
