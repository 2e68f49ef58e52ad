"""Fine-tune trials: a backbone's top layers (`top-n`) or all of it (`full`) trained on
streamed, augmented images, each starting from the chosen head trial's head. They run as one
bracket of successive halving: every configuration trains 1 epoch, the best 1/`factor` go on
to `factor` epochs, and so on up to `max_epochs`, while the epochs they spend together stay
within `budget_epochs`. Each configuration is one model built once and trained on across
rungs. The state after each rung (weights, epochs, curves) is written to the checkpoints
folder; a killed search starts again after its last finished rung (Adam's moments restart).
With `cached_top` (the default), a `top` trial trains on the activations below its top layers,
computed once, without augmentation (tasks/search/cut.py): its epochs cost the top layers only.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tasks.core import progress, runner
from tasks.core.config import FinetuneParams, SearchParams
from tasks.data.datasets import Split
from tasks.modality import Augmentation
from tasks.models.features import row_batches
from tasks.models.trainer import Trainer, build_trainer
from tasks.search.cut import Cut, activations, cut, trainer_on_cut
from tasks.search.heads import Validation
from tasks.search.records import Deadline, SearchBackbone, TrialRecord, Z, noise, past, say

EAGER_STEPS = 32  # a trial on cached activations of at most this many updates in its budget: eager


@dataclass
class _Config:
    """A fine-tune configuration being trained across rungs."""

    record: TrialRecord
    trainer: Trainer  # its classifier is the trial's
    best: list[np.ndarray] = field(default_factory=list)  # the classifier's weights at its best epoch
    since_best: int = 0  # epochs since its val_accuracy last improved
    stopped: bool = False  # early stopping (patience) ended it
    cut: Cut | None = None  # a `top` trial on cached activations below its top layers (tasks/search/cut.py)
    trainer_on_cut: Trainer | None = None


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
            config.best = config.trainer.classifier.get_weights()
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


def fine_tune_rungs(
    backbone: SearchBackbone,
    head: tuple[TrialRecord, list[np.ndarray]],
    train: Split,
    val: Split,
    num_classes: int,
    params: SearchParams,
    finetune: FinetuneParams,
    augment: Augmentation | None,
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
        if values["strategy"] == "top" and params.cached_top:
            configs[-1].cut = cut(trainer.backbone, values["unfreeze_layers"])
    if not configs:
        return []
    stream = train.batches(backbone.encoding, finetune.batch_size, shuffle_seed=finetune.seed)
    val_stream = val.batches(backbone.encoding, finetune.batch_size)
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
    cached: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # cut depth -> train, val activations
    while alive and spent < params.budget_epochs and not past(deadline):
        for config in alive:  # the leader first: what is left of the budget goes to it
            epochs = min(target, config.record.epochs + params.budget_epochs - spent)
            if epochs <= config.record.epochs or past(deadline):
                continue
            progress.say(
                f"search: {config.record.trial_id} of {backbone.name}, epochs to {epochs}"
                + (" (on cached activations)" if config.cut else "")
            )
            curve = _Curve(config, finetune.patience)
            if config.cut is not None:
                if not cached:  # every cut's, once, when the first of them trains
                    cuts = [c.cut for c in configs if c.cut is not None]
                    cached = activations(cuts, backbone.name, (train, val), backbone.encoding, folder / "cut")
                x, x_val = cached[config.cut.depth]
                if config.trainer_on_cut is None:
                    config.trainer_on_cut = trainer_on_cut(
                        config.trainer, config.cut, config.record.hyperparameters, finetune
                    )
                    # a few updates on cached rows run sooner eagerly than traced (0.5 s a trace)
                    steps = -(-len(x) // finetune.batch_size) * params.budget_epochs
                    config.trainer_on_cut.run_eagerly = steps <= EAGER_STEPS
                config.trainer_on_cut.fit(
                    row_batches(x, train.y, finetune.batch_size, finetune.seed),
                    steps_per_epoch=-(-len(x) // finetune.batch_size),
                    initial_epoch=config.record.epochs,
                    epochs=epochs,
                    callbacks=[Validation(x_val, val.y, chunk=512), curve, *callbacks],
                    shuffle=False,  # the pipeline reshuffles itself every epoch
                    verbose=0,
                )
            else:
                config.trainer.fit(
                    stream,
                    validation_data=val_stream,
                    initial_epoch=config.record.epochs,
                    epochs=epochs,
                    callbacks=[curve, *callbacks],
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
        if head[0].score - best > Z * noise(head[0].score, len(val)):
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


@dataclass
class RungsJob:
    """What a worker needs to run the bracket: the backbone without its cached features, the
    chosen head, the splits as file lists, the time left rather than a clock reading."""

    backbone: SearchBackbone
    head: tuple[TrialRecord, list[np.ndarray]]
    train: Split
    val: Split
    num_classes: int
    params: SearchParams
    finetune: FinetuneParams
    augment: Augmentation | None
    folder: Path  # the bracket's state (rungs.json, weights): a killed run resumes from it
    events: Path | None
    seconds_left: float | None


def bracket(job: RungsJob) -> list[tuple[TrialRecord, keras.Model]]:
    """The bracket of `job` in this process: (record, classifier) per configuration that trained."""
    deadline = None if job.seconds_left is None else time.monotonic() + job.seconds_left
    callbacks: list[keras.callbacks.Callback] = [Deadline(deadline)]
    if job.events is not None:
        callbacks.append(keras.callbacks.TensorBoard(str(job.events), write_graph=False))
    return fine_tune_rungs(
        job.backbone, job.head, job.train, job.val, job.num_classes, job.params, job.finetune,
        job.augment, job.folder, callbacks, deadline,
    )  # fmt: skip


def run_rungs(job: RungsJob) -> list[tuple[TrialRecord, str]]:
    """A worker's task: the bracket, each classifier saved beside its state; (record, file)."""
    saved = []
    for record, classifier in bracket(job):
        path = job.folder / f"{record.trial_id}.keras"
        classifier.save(path)
        saved.append((record, str(path)))
    return saved


def rungs_on_runner(job: RungsJob) -> runner.Pending:
    """The bracket started now on a worker of the flow's Dask runner (one task: its
    configurations train on across rungs in one process); `.result()` waits for it and loads
    the classifiers, which come back as files in the shared folder: [(record, classifier)]."""
    empty = np.empty((0, 0), dtype=np.float32)
    light = replace(job, backbone=replace(job.backbone, train_features=empty, val_features=empty))

    def loaded(done: list[tuple[TrialRecord, str]]) -> list[tuple[TrialRecord, keras.Model]]:
        return [(r, keras.saving.load_model(path, compile=False, safe_mode=True)) for r, path in done]

    return runner.current().submit(run_rungs, light).then(loaded)
