"""The finetune stage: the fixed recipe or the strategy search (tasks/models/), its curves,
TensorBoard events and search trials in MLflow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow

from flows.stages.caching import cached_stage, stage_key
from flows.stages.flowrun import (
    FlowRun,
    log_events,
    run_lineage,
    say_resumed,
    tag_parent,
)
from tasks.core.config import (
    FinetuneParams,
    Paths,
    ReproducibilityParams,
    SearchParams,
)
from tasks.core.errors import UserError
from tasks.core.files import printable
from tasks.data import datasets
from tasks.modality import Augmentation, Encoding, Modality
from tasks.models import checkpoints, distill, features, finetune
from tasks.reporting.tracking import log_history
from tasks.search import strategy
from tasks.selection import candidates


@cached_stage("finetune", folders=("unlabelled",))
def finetune_model(
    start: candidates.Selection,
    data: datasets.SplitData,
    params: FinetuneParams,
    search: SearchParams,
    augment: Augmentation | None,
    reproducibility: ReproducibilityParams,
    root: Path,
    modality: Modality,
    unlabelled: Path | None = None,
) -> finetune.FinetuneResult:
    """With `search.enabled`, the strategy search chooses the strategy and the backbone among
    LogME's best `select.top_k` and, on a warm start, the champion (its head trials start from
    the champion's head; tasks/search/).
    Otherwise the fixed recipe (from the champion on a warm start): phase 1 head on the frozen
    features (kept on disk under `root`: select computed the training split's), phase 2 top of
    the backbone at a lower rate on streamed images; with `params.distill_from`, both learn that
    version's soft targets, on the train split and the transfer set `unlabelled` (a folder of
    images without labels, `transfer_folder`), as the search's distillation of an ensemble
    does. Checkpoints under `root`, keyed like the result, so a killed run resumes.
    `reproducibility` only keys the cache."""
    key = stage_key()
    folder = checkpoints.folder(root, "finetune", key)
    events = checkpoints.events_folder(root, "finetune", key)
    # more images for a teacher to label than the split has
    transfer = datasets.unlabelled(unlabelled, modality) if unlabelled is not None else None
    if search.enabled:
        backbones = [
            strategy.SearchBackbone(
                choice.uri,
                choice.backbone,
                choice.encoding,
                *(
                    features.features(choice.backbone, choice.backbone_id, split, choice.encoding, root, what)
                    for split, what in ((data.train, "train features"), (data.val, "val features"))
                ),
                choice.init_head,
            )
            for choice in (start, *start.runners_up)
        ]
        found = strategy.search(
            backbones,
            data.train,
            data.val,
            len(data.class_names),
            search,
            params,
            augment,
            folder,
            events,
            unlabelled=transfer,
        )
        result = strategy.as_finetune_result(found, events)
    else:
        train, teacher = data.train, None
        if params.distill_from:
            train = datasets.joined(data.train, transfer) if transfer is not None else data.train
            teacher = teacher_targets(params.distill_from, data.class_names, train, data.val, start.encoding)
        frozen = {
            name: features.features(
                start.backbone, start.backbone_id, split, start.encoding, root, f"{name} features"
            )
            for name, split in (("train", train), ("val", data.val))
        }
        result = finetune.finetune(
            start.backbone,
            train,
            data.val,
            len(data.class_names),
            params,
            start.encoding,
            init_head=start.init_head,
            train_features=frozen["train"],
            val_features=frozen["val"],
            checkpoints=folder,
            events=events,
            teacher=teacher,
        )
    if used_transfer_set(params, result) and transfer is not None:
        result.transfer_set = {
            "folder": str(unlabelled),
            "images": len(transfer),
            "digest": transfer.digest(),
        }
    say_resumed(result.resumed, (result.search or {}).get("resumed"))
    result.fingerprint = key
    return result


def used_transfer_set(params: FinetuneParams, result: finetune.FinetuneResult) -> bool:
    """Whether the model learnt from the transfer set: a distillation of the fixed recipe, or the
    student the search distilled from the ensemble it kept, when that student replaced it."""
    if result.search is None:
        return params.distill_from is not None
    return bool(((result.search["ensemble"] or {}).get("distilled") or {}).get("kept"))


def transfer_folder(paths: Paths, params: FinetuneParams) -> Path | None:
    """The distillation's transfer set (`finetune.distill_unlabelled`, relative to the project
    root), which must be a folder; None without one."""
    if not params.distill_unlabelled:
        return None
    folder = paths.resolve(params.distill_unlabelled)
    if not folder.is_dir():
        raise UserError(
            f"transfer set {printable(str(folder))}: no such folder (distill --unlabelled, "
            "finetune.distill_unlabelled); point it at a folder of unlabelled images"
        )
    return folder


def teacher_targets(
    ref: str, class_names: list[str], train: datasets.Split, val: datasets.Split, encoding: Encoding
) -> tuple[Any, Any]:
    """The distillation targets (arrays) of the `train` and `val` splits from registered version
    `ref` (NAME/N), which must know the same classes and take the student's input."""
    from tasks.registry import versions

    name, _, version = ref.partition("/")
    if versions.resolve(ref)[1] is None:
        raise UserError(f"finetune.distill_from {ref}: no such registered version")
    served = versions.load_version(name, version)
    teacher, classes = versions.champion_keras_model(served)
    if classes != class_names:
        raise UserError(
            f"distill: teacher {name} v{version} knows classes {classes}, this data {class_names}"
        )
    taken = versions.encoding_of(served).key()
    if taken != encoding.key():
        raise UserError(
            f"distill: teacher {name} v{version} takes {taken} images, the student {encoding.key()}: "
            "choose a student backbone of the teacher's input size"
        )
    return (
        distill.targets(teacher, train, encoding, f"teacher on train ({len(train)} images)"),
        distill.targets(teacher, val, encoding, "teacher on val"),
    )


def log_training(result: finetune.FinetuneResult, run: FlowRun, reused: bool) -> str:
    if result.resumed and not reused:
        mlflow.set_tag("resumed_from_epoch", json.dumps(result.resumed))
    if result.search and result.search.get("resumed") and not reused:
        mlflow.set_tag("resumed_search", json.dumps(result.search["resumed"]))
    log_history(result.history)
    log_events(result.events)
    mlflow.log_dict({"unfrozen_layers": result.unfrozen}, "unfrozen_layers.json")
    if result.transfer_set:
        mlflow.set_tag("distill_transfer_set", json.dumps(result.transfer_set, sort_keys=True))
    mlflow.log_metrics({f"epochs.{phase}": len(h["loss"]) for phase, h in result.history.items()})
    if result.search is None:
        taught = result.transfer_set
        extra = f"; the teacher also labelled {taught['images']} unlabelled images" if taught else ""
        return training_line(result.history) + extra
    log_search(result.search, run)
    return result.search["explanation"]


def strategy_tag(result: finetune.FinetuneResult) -> dict[str, str]:
    """The chosen fine-tuning strategy, as a version tag (`fixed recipe` without a search)."""
    chosen = result.search["chosen"] if result.search else "fixed recipe"
    return {"strategy": json.dumps(chosen, sort_keys=True)}


def log_search(found: dict[str, Any], run: FlowRun) -> None:
    """The strategy search in the finetune run (`search.json`, the chosen strategy as tags, on
    the flow's run too) and one nested run per trial: its hyperparameters and curve."""
    mlflow.log_dict(found, "search.json")
    mlflow.log_metric("search.val_accuracy", found["val_accuracy"])
    tag_parent(run, {"strategy": json.dumps(found["chosen"], sort_keys=True)})
    stage_id = mlflow.active_run().info.run_id
    client = mlflow.MlflowClient()
    experiment = client.get_run(stage_id).info.experiment_id
    for trial in found["trials"]:
        child = client.create_run(
            experiment,
            run_name=f"trial-{trial['trial_id']}",
            tags={"mlflow.parentRunId": stage_id, "stage": "search-trial", **run_lineage(run)},
        )
        trial_id = child.info.run_id
        for key, value in trial["hyperparameters"].items():
            client.log_param(trial_id, key, value)
        client.log_metric(trial_id, "score", trial["score"])
        for metric, values in trial["history"].items():
            for step, value in enumerate(values):
                client.log_metric(trial_id, metric, value, step=step)
        client.set_terminated(trial_id)


def training_line(history: dict[str, dict[str, list[float]]]) -> str:
    """ "head 12 epochs (val_accuracy 0.9125), finetune 6 epochs (val_accuracy 0.9250)"."""
    parts = []
    for phase, series in history.items():
        best = f" (best val_accuracy {max(series['val_accuracy']):.4f})" if series.get("val_accuracy") else ""
        parts.append(f"{phase} {len(series.get('loss', []))} epochs{best}")
    return ", ".join(parts) or "no epochs"
