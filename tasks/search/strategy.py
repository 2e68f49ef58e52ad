"""Choose how to fine-tune, not only what: a budgeted search on the validation split over the
fine-tuning strategies of the backbones `select` kept (LogME's top k), on by default.

- `head`: the backbone frozen, only a new softmax head trains: trials on each backbone's cached
  frozen features, a grid of learning rates (Keras Tuner; seconds each).
- `top`: the top `unfreeze_layers` weighted layers unfrozen (BatchNorm stays frozen); `full`: all.
- `scratch`: the smallest-input backbone's architecture (`scratch.architecture`) fresh, every layer
  trained (BatchNorm too): the baseline that always competes, so plentiful labels can prefer it.
  It trains once on its own budget (`scratch_epochs`, early stopping on val_accuracy after
  `scratch_patience`), not in the bracket: a fresh network cannot compete after a rung's epoch.
  On a Dask runner it trains on a worker while this process runs the rest (tasks/search/scratch.py).

`top` and `full` fine-tune the backbone of the best head trial, from that head (a random head
would send large gradients into the backbone: Keras' fine-tuning guide), as one bracket of
successive halving within `budget_epochs` (`rungs`). The bracket ends early when
the best head leads every fine-tune trial by more than two standard errors of the val accuracy.
Unfrozen backbone layers learn at `backbone_rate` times the head's rate (two optimizers,
`trainer.Trainer`). Augmentation layers act on training batches only, inside
`Trainer.train_step`: the classifier that is kept and served never contains them. Every trial's
settings and per-epoch curve are returned for the flow to log (one nested MLflow run each).

Ensembles (模型融合): the best `ensemble_size` trials of the winner's input size, their
probabilities averaged (weighted by validation accuracy), are kept instead of the chosen trial
only when they really lead it on the validation split (`records.leads`, the paired test of the
choice rule): an ensemble of near-equal heads that is two images better on val is noise. The
ensemble is one Keras model (`ensemble.ensemble`: built-in layers only), so it is registered
and served like any other. An ensemble of k distinct backbones costs k forward passes an image;
with `distill_ensemble` it is distilled (知识蒸馏) into one copy of the chosen trial's architecture
(`ensemble.distil`: the fixed recipe on the ensemble's soft targets), and that student is kept
instead unless the ensemble really leads it on val.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tasks.core import progress, runner
from tasks.core.config import FinetuneParams, SearchParams
from tasks.core.errors import UserError
from tasks.data.datasets import Split
from tasks.modality import Augmentation, Encoding
from tasks.models.checkpoints import finished, resumed_epoch
from tasks.models.finetune import FinetuneResult
from tasks.search import scratch, tuner_workers
from tasks.search.ensemble import backbone_passes, distil, fuse, student_kept
from tasks.search.heads import (
    head_classifier,
    head_log_probabilities,
    head_trials,
    raw_baseline,
    streamed_probabilities,
)
from tasks.search.records import SearchBackbone, TrialRecord, Z, choose, past
from tasks.search.rungs import RungsJob, bracket, rungs_on_runner
from tasks.search.scratch import SCRATCH

STRATEGIES = ("head", "top", "full", "scratch", "raw")


@dataclass
class SearchResult:
    model: keras.Model  # the chosen classifier (or ensemble), trained
    best: TrialRecord
    trials: list[TrialRecord]  # head trials, fine-tune trials, then the scratch baseline's
    val_accuracy: float  # of `model`, measured again on the validation split
    ensemble: dict[str, Any] | None = None  # members, weights, val accuracy: when it was kept
    backbone: str = ""  # the name of the backbone `best` trained (scratch: the architecture's)
    encoding: Encoding | None = None  # how `model` takes its input
    resumed: list[str] | None = None  # what a killed run of this search left and this one kept

    def explanation(self) -> str:
        by_strategy: dict[str, float] = {}
        for trial in self.trials:
            name = trial.hyperparameters.get("strategy", "?")
            by_strategy[name] = max(by_strategy.get(name, 0.0), trial.score)
        ranked = ", ".join(f"{k} {v:.4f}" for k, v in sorted(by_strategy.items(), key=lambda kv: -kv[1]))
        heads = sum(t.hyperparameters.get("strategy") == "head" for t in self.trials)
        tuned = [t for t in self.trials if t.hyperparameters.get("strategy") in ("top", "full")]
        scratch = next((t for t in self.trials if t.trial_id == SCRATCH), None)
        raw = any(t.hyperparameters.get("strategy") == "raw" for t in self.trials)
        words = (
            f"{self.best.words()} was kept on val_accuracy {self.best.score:.4f} (the simplest the "
            f"best does not lead by {Z:g} paired standard errors) over {heads} head trials on cached "
            f"features, "
            f"{len(tuned)} fine-tune trials ({sum(t.epochs for t in tuned)} epochs)"
            + (", the raw-input baseline" if raw else "")
            + (f" and the scratch baseline ({scratch.epochs} epochs)" if scratch else "")
            + f" (best per strategy: {ranked})"
        )
        if self.resumed:
            words = f"resumed the killed search's {' and '.join(self.resumed)}; " + words
        if self.ensemble:
            distilled = self.ensemble.get("distilled")
            words += (
                "; averaged with the raw-input baseline (search.fuse_raw), which it does not "
                f"really lead, it scored {self.ensemble['val_accuracy']:.4f} on val"
                if self.ensemble.get("rule") == "fuse_raw"
                else f"; an ensemble of the best {len(self.ensemble['members'])} scored "
                f"{self.ensemble['val_accuracy']:.4f} on val"
            )
            if distilled is None:
                words += " and is kept"
            else:
                transfer = distilled.get("unlabelled_images")
                words += (
                    f" ({distilled['backbone_passes'][0]} backbone passes an image); distilled into one "
                    f"{distilled['architecture']}"
                    + (f" with {transfer} unlabelled images" if transfer else "")
                    + f", which scored {distilled['val_accuracy']:.4f}: "
                    + (
                        "the ensemble does not lead it, the student is kept"
                        if distilled["kept"]
                        else "the ensemble leads it and is kept"
                    )
                )
        return words


def val_probabilities(
    record: TrialRecord, model: keras.Model, backbone: SearchBackbone, val: Split
) -> np.ndarray:
    """A trial's probabilities on the val split: a head on a frozen backbone (head trials, the
    raw-pixel baseline) from the backbone's cached val features (no forward pass of the
    backbone); any other trial's model over the streamed images."""
    if record.hyperparameters.get("strategy") not in ("head", "raw"):
        return streamed_probabilities(model, backbone.encoding, val)
    return np.exp(head_log_probabilities(backbone.val_features, *model.get_layer("head").get_weights()))


def restored(folder: Path) -> list[str]:
    """What a killed search left in its state `folder` for this run to go on from, in words:
    its finished head trials, the fine-tune bracket's trained configurations (their epochs) and
    the scratch baseline's last checkpointed epoch. Empty when it starts afresh."""
    found = []
    finished_trials = 0
    for trial in (folder / "heads").glob("trial_*/trial.json"):  # Keras Tuner's record of each
        try:
            finished_trials += json.loads(trial.read_text()).get("status") == "COMPLETED"
        except (OSError, ValueError, AttributeError):
            continue  # cut off by the kill: the tuner runs it again
    if finished_trials:
        found.append(f"{finished_trials} head trial{'s' * (finished_trials != 1)}")
    try:
        rungs = json.loads((folder / "rungs" / "rungs.json").read_text())
        epochs = sum(saved["record"]["epochs"] for saved in rungs.values())
        found.append(f"{len(rungs)} fine-tune configurations ({epochs} epochs)")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    epoch = resumed_epoch(folder / SCRATCH)
    if epoch:
        found.append(f"scratch baseline after epoch {epoch}")
    return found


def search(
    backbones: list[SearchBackbone],
    train: Split,
    val: Split,
    num_classes: int,
    params: SearchParams,
    finetune: FinetuneParams,
    augment: Augmentation | None,
    checkpoints: Path | None = None,
    events: Path | None = None,
    deadline: float | None = None,
    unlabelled: Split | None = None,
) -> SearchResult:
    """Head trials on every backbone's frozen features, fine-tune trials of the best one, the
    scratch baseline if `params.strategies` has them; the best on val (or the ensemble of the
    best `ensemble_size`). The search keeps its state in `checkpoints/search` (a killed search
    resumes after its last finished trial or rung; removed when done) or in a temporary folder;
    TensorBoard event files of the trials go to `events/search/<trial>`. No trial starts and no
    training goes on after `deadline` (time.monotonic(); `time_budget_minutes` sets one).
    `unlabelled`: the transfer set of a distillation of the kept ensemble (`distill_ensemble`)."""
    if deadline is None and params.time_budget_minutes > 0:
        deadline = time.monotonic() + 60 * params.time_budget_minutes
    keras.utils.set_random_seed(finetune.seed)
    resumed = []
    if checkpoints is not None:
        folder = checkpoints / "search"
        resumed = restored(folder)
        if resumed:
            progress.say(f"search: resuming a killed run's {' and '.join(resumed)}")
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="transferops-search-"))
    by_name = {b.name: b for b in backbones}
    ranked: list[tuple[TrialRecord, keras.Model]] = []
    records: list[TrialRecord] = []
    probabilities: dict[str, np.ndarray] = {}  # trial id -> its val probabilities

    def correct(trials: list[tuple[TrialRecord, keras.Model]]) -> dict[str, np.ndarray]:
        """Each trial's per-image val correctness (the paired noise of `choose`)."""
        for record, model in trials:
            if record.trial_id not in probabilities:
                backbone = by_name[record.hyperparameters.get("backbone", backbones[0].name)]
                probabilities[record.trial_id] = val_probabilities(record, model, backbone, val)
        return {
            record.trial_id: probabilities[record.trial_id].argmax(axis=1) == val.y for record, _ in trials
        }

    smallest = min(backbones, key=lambda b: b.encoding.cost)
    architecture = scratch.architecture(smallest)  # texts: a bag of token embeddings
    by_name.setdefault(architecture.name, architecture)

    def scratch_job() -> scratch.ScratchJob:
        board = events / "search" / SCRATCH if events is not None else None
        left = None if deadline is None else deadline - time.monotonic()
        return scratch.ScratchJob(
            architecture, train, val, num_classes, params, finetune, augment, folder, board, left
        )

    # on a Dask runner the scratch baseline trains on a worker from the start, the bracket once the
    # head trials have chosen its start; this process only coordinates
    elsewhere: runner.Pending | None = None
    rungs: runner.Pending | None = None
    bracketed: list[tuple[TrialRecord, keras.Model]] = []
    if SCRATCH in params.strategies and not runner.current().in_process:
        elsewhere = scratch.start_on_runner(scratch_job())
    try:
        if "head" in params.strategies or {"top", "full"} & set(params.strategies):
            heads = head_trials(
                backbones,
                (train.y, val.y),
                num_classes,
                params,
                finetune,
                folder,
                checkpoints is not None,
                None if runner.current().in_process else tuner_workers.search,  # Keras Tuner workers
            )
            records += [record for record, _ in heads]
            classifiers = [
                (
                    record,
                    head_classifier(
                        by_name[record.hyperparameters["backbone"]], weights, num_classes, finetune
                    ),
                )
                for record, weights in heads
            ]
            start = choose([record for record, _ in heads], len(val), correct(classifiers))
            best_head = next(pair for pair in heads if pair[0] is start)
            if "head" in params.strategies:
                ranked += classifiers
            board = events / "search" / "fine-tune" if events is not None else None
            job = RungsJob(
                by_name[best_head[0].hyperparameters["backbone"]],
                best_head,
                train,
                val,
                num_classes,
                params,
                finetune,
                augment,
                folder / "rungs",
                board,
                None if deadline is None else deadline - time.monotonic(),
            )
            if runner.current().in_process:
                bracketed = bracket(job)
            else:  # on a worker, while this process fits the raw-input baseline
                rungs = rungs_on_runner(job)
        found = None
        if "raw" in params.strategies and not past(deadline):
            found = raw_baseline(smallest, train, val, num_classes, finetune)
        if rungs is not None:
            bracketed = rungs.result()
        records += [record for record, _ in bracketed]
        ranked += bracketed
        if found is not None:
            by_name[found[0].name] = found[0]
            records.append(found[1][0])
            ranked.append(found[1])
        if elsewhere is not None:
            scratched: tuple[TrialRecord, keras.Model] | None = elsewhere.result()
        elif SCRATCH in params.strategies and not past(deadline):
            scratched = scratch.train_job(scratch_job())
        else:
            scratched = None
        if scratched is not None:
            records.append(scratched[0])
            ranked.append(scratched)
    except BaseException:
        for pending in (elsewhere, rungs):
            if pending is not None:
                pending.cancel()  # not left training on its worker for a search that has ended
        if checkpoints is None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    finished(checkpoints)
    if not ranked:
        raise UserError("the strategy search finished no trial before its deadline: give it more time")
    best_record = choose([record for record, _ in ranked], len(val), correct(ranked))
    ranked.sort(key=lambda pair: (pair[0] is not best_record, -pair[0].score))  # the chosen first
    backbone = by_name[best_record.hyperparameters.get("backbone", backbones[0].name)]
    same_size = [pair for pair in ranked if pair[1].input_shape[1] == ranked[0][1].input_shape[1]]
    top = same_size[: params.ensemble_size]
    model, val_accuracy, fused = fuse(
        [m for _, m in top], [probabilities[r.trial_id] for r, _ in top], val.y, params.ensemble_weighted
    )
    if fused is None and params.fuse_raw and found is not None and best_record is not found[1][0]:
        top = [ranked[0], found[1]]  # the chosen trial and the raw-input baseline: kept unless led
        model, val_accuracy, fused = fuse(
            [m for _, m in top],
            [probabilities[r.trial_id] for r, _ in top],
            val.y,
            params.ensemble_weighted,
            unless_led=True,
        )
    if fused is not None:
        fused["members"] = [record.words() for record, _ in top]
        # an ensemble of k backbones (k passes an image) back to one; not into a pixel regression
        several = backbone_passes(model) > 1 and backbone.name != backbone.encoding.baseline_uri
        if params.distill_ensemble and several and not past(deadline):
            teacher_val = sum(
                w * probabilities[r.trial_id] for w, (r, _) in zip(fused["weights"], top, strict=True)
            )
            student, fused["distilled"] = distilled(
                model, teacher_val, backbone, train, val, num_classes, finetune, unlabelled
            )
            if student is not None:
                model, val_accuracy = student, fused["distilled"]["val_accuracy"]
    return SearchResult(
        model, best_record, records, val_accuracy, fused, backbone.name, backbone.encoding, resumed
    )


def distilled(
    teacher: keras.Model,
    teacher_val: np.ndarray,
    architecture: SearchBackbone,
    train: Split,
    val: Split,
    num_classes: int,
    finetune: FinetuneParams,
    unlabelled: Split | None = None,
) -> tuple[keras.Model | None, dict[str, Any]]:
    """The kept ensemble `teacher` (val probabilities `teacher_val`) distilled into one
    `architecture` (the chosen trial's; `ensemble.distil`): the student when the ensemble does not
    really lead it on val, else None; and what happened (for `search.json`)."""
    student = distil(teacher, teacher_val, architecture, train, val, num_classes, finetune, unlabelled)
    student_val = streamed_probabilities(student, architecture.encoding, val)
    kept = student_kept(teacher_val, student_val, val.y)
    record = {
        "architecture": architecture.name,
        "val_accuracy": float((student_val.argmax(axis=1) == val.y).mean()),
        "backbone_passes": [backbone_passes(teacher), 1],
        "kept": kept,
        "unlabelled_images": 0 if unlabelled is None else len(unlabelled),
    }
    return (student if kept else None), record


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
            "resumed": found.resumed or [],
        },
    )
