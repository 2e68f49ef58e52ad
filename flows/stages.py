"""Prefect tasks: one per stage, each a thin wrapper that calls the plain functions in
`tasks/` and records what happened in the stage's nested MLflow run.

Results stay in memory (arrays and Keras models), so no task caches or persists them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd
from prefect import get_run_logger, runtime, task
from prefect.cache_policies import NONE
from prefect.states import Failed, State

from tasks import backbones, evaluate, finetune, ingest, lineage, registry, split, tracking, validate
from tasks.config import (
    Candidate,
    FinetuneParams,
    Params,
    Paths,
    PretrainParams,
    RegisterParams,
    SplitParams,
    ValidateParams,
)
from tasks.datasets import Split, class_names_of, load_split
from tasks.logme import logme
from tasks.tracking import flatten, log_history, scratch_dir, stage_run

stage = task(cache_policy=NONE, persist_result=False)


@dataclass
class FlowRun:
    paths: Paths
    run_id: str  # the MLflow parent run
    tags: dict[str, str]  # code lineage: git commit, Prefect flow run id


@contextmanager
def tracked_flow(name: str, params: Params, root: Path) -> Iterator[FlowRun]:
    """Configure MLflow for the project at `root` and open the flow's parent run."""
    paths = Paths.from_root(root)
    tracking.configure(paths.mlflow_dir)
    tags = {"git_commit": lineage.git_commit(paths.root), "prefect_flow_run_id": str(runtime.flow_run.id)}
    with tracking.flow_run(name, tags, params.as_dict()) as parent:
        yield FlowRun(paths, parent.info.run_id, tags)


def failed(message: str) -> State:
    """End the parent run as FAILED; the returned state fails the Prefect flow run with
    `message` (no traceback: the message names the files and reasons)."""
    mlflow.end_run("FAILED")
    return Failed(message=message)


@dataclass
class ValidatedData:
    manifest: pd.DataFrame
    report: validate.ValidationReport
    lineage: dict[str, str]


@stage(name="validate")
def validate_data(data_dir: Path, params: ValidateParams, parent_run_id: str) -> ValidatedData:
    """Ingest (hash + decode every file) and run the Great Expectations suites."""
    with stage_run("validate", parent_run_id), scratch_dir() as tmp:
        manifest = ingest.scan(data_dir, max_pixels=params.max_pixels)
        report = validate.validate_manifest(
            manifest, ingest.class_folders(data_dir), params, tmp / "data_docs"
        )
        data = lineage.data_lineage(data_dir, manifest)
        mlflow.set_tags(data)
        client = mlflow.MlflowClient()
        for key, value in data.items():  # the flow's run carries the data version too
            client.set_tag(parent_run_id, key, value)
        mlflow.log_params(flatten({"validate": vars(params)}))
        mlflow.log_metrics(report.statistics)
        manifest_path = tmp / "manifest.parquet"
        manifest.to_parquet(manifest_path)
        mlflow.log_artifact(str(manifest_path))
        mlflow.log_artifacts(str(report.docs_dir), "data_docs")
        mlflow.log_dict(
            {"success": report.success, "problems": report.problems, "ignored": report.ignored},
            "validation.json",
        )
        if not report.success:
            mlflow.set_tag("outcome", "validation failed")
    return ValidatedData(manifest=manifest, report=report, lineage=data)


@dataclass
class SplitData:
    class_names: list[str]
    train: Split
    val: Split
    test: Split


@stage(name="split")
def split_data(
    manifest: pd.DataFrame, data_dir: Path, params: SplitParams, image_size: int, parent_run_id: str
) -> SplitData:
    """Assign splits by content hash and decode each split's images once."""
    with stage_run("split", parent_run_id):
        table = split.assign_splits(
            ingest.usable(manifest), params.val_fraction, params.test_fraction, params.salt
        )
        names = class_names_of(table)
        loaded = {s: load_split(table, data_dir, s, names, image_size) for s in split.SPLITS}
        mlflow.log_params(flatten({"split": vars(params)}))
        mlflow.log_metrics({f"n_{s}": len(loaded[s]) for s in split.SPLITS})
        mlflow.log_table(split.split_counts(table).reset_index(), "split_counts.json")
        mlflow.log_table(table[["path", "label", "sha256", "split"]], "split_table.json")
    return SplitData(names, loaded["train"], loaded["val"], loaded["test"])


def candidate_name(candidate: Candidate) -> str:
    """A metric-safe short name: registry:foo@bar -> foo_bar."""
    ref = candidate.uri.partition(":")[2]
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(ref).name)


@dataclass
class Selection:
    """Where fine-tuning starts: a backbone, and possibly a head to warm-start from."""

    uri: str
    backbone: keras.Model
    scores: dict[str, float]  # LogME per candidate; empty for a warm start
    train_features: np.ndarray | None = None  # features of the whole training split, if computed
    init_head: list[np.ndarray] | None = None


def champion_start(model_name: str, class_names: list[str]) -> Selection | None:
    """Warm start from the champion (backbone and head), if it knows the same classes."""
    warm = registry.warm_start(model_name, class_names)
    if warm is None:
        return None
    backbone, head, version = warm
    return Selection(f"registry:{model_name}@champion (v{version})", backbone, {}, init_head=head)


@stage(name="select")
def select_backbone(
    candidates: tuple[Candidate, ...],
    train: Split,
    image_size: int,
    max_samples: int,
    seed: int,
    parent_run_id: str,
) -> Selection:
    """Score each candidate with LogME on frozen features of the training split; keep the best."""
    logger = get_run_logger()
    with stage_run("select", parent_run_id):
        rng = np.random.default_rng(seed)
        sample = np.arange(len(train))
        if len(sample) > max_samples:
            sample = np.sort(rng.choice(sample, size=max_samples, replace=False))
        scores: dict[str, float] = {}
        loaded: dict[str, tuple[Candidate, keras.Model, np.ndarray]] = {}
        for candidate in candidates:
            name = candidate_name(candidate)
            model = backbones.load_candidate(candidate, image_size)
            features = backbones.extract_features(model, train.x[sample])
            scores[name] = logme(features, train.y[sample])
            loaded[name] = (candidate, model, features)
            logger.info("LogME %s = %.4f (%d features)", candidate.uri, scores[name], features.shape[1])
        chosen, model, features = loaded[max(scores, key=scores.__getitem__)]
        mlflow.log_metrics({f"logme.{k}": v for k, v in scores.items()})
        mlflow.log_dict({"scores": scores, "chosen": chosen.uri, "samples": len(sample)}, "logme.json")
        mlflow.set_tag("backbone", chosen.uri)
    return Selection(chosen.uri, model, scores, features if len(sample) == len(train) else None)


@stage(name="finetune")
def finetune_model(
    start: Selection, data: SplitData, params: FinetuneParams, parent_run_id: str
) -> finetune.FinetuneResult:
    """Phase 1 head on cached features, phase 2 top of the backbone at a lower rate."""
    with stage_run("finetune", parent_run_id):
        mlflow.log_params(flatten({"finetune": vars(params)}))
        mlflow.log_params({"backbone": start.uri, "warm_start": start.init_head is not None})
        result = finetune.finetune(
            start.backbone,
            (data.train.x, data.train.y),
            (data.val.x, data.val.y),
            len(data.class_names),
            params,
            init_head=start.init_head,
            train_features=start.train_features,
        )
        log_history(result.history)
        mlflow.log_dict({"unfrozen_layers": result.unfrozen}, "unfrozen_layers.json")
        mlflow.log_metrics({f"epochs.{phase}": len(h["loss"]) for phase, h in result.history.items()})
    return result


@dataclass
class Evaluation:
    metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    champion_version: str | None


@stage(name="evaluate")
def evaluate_model(
    model: keras.Model, data: SplitData, registered_model: str, parent_run_id: str
) -> Evaluation:
    """Test metrics of the new model and, on the same test images, of the current champion."""
    logger = get_run_logger()
    with stage_run("evaluate", parent_run_id), scratch_dir() as tmp:
        probabilities = np.asarray(model.predict(data.test.x.astype("float32"), verbose=0))
        scores = evaluate.metrics(data.test.y, probabilities)
        mlflow.log_metrics({f"test_{k}": v for k, v in scores.items()})
        mlflow.log_dict(
            evaluate.per_class_report(data.test.y, probabilities, data.class_names),
            "per_class_report.json",
        )
        matrix = evaluate.confusion(data.test.y, probabilities, len(data.class_names))
        mlflow.log_artifact(
            str(
                evaluate.plot_confusion(
                    matrix, data.class_names, tmp / "confusion_matrix.png", "challenger (test split)"
                )
            )
        )

        champion_scores, champion_version = None, None
        # Loaded afresh, also after a warm start: fine-tuning changed that copy's weights.
        champion = registry.load_champion(registered_model)
        if champion is not None:
            version, pyfunc_model = champion
            champion_version = str(version.version)
            predicted = registry.predict_paths(pyfunc_model, data.test.paths)
            champion_classes = [c for c in predicted.columns if c not in ("label", "confidence")]
            if champion_classes == data.class_names:
                champion_probabilities = predicted[data.class_names].to_numpy()
                champion_scores = evaluate.metrics(data.test.y, champion_probabilities)
                mlflow.log_metrics({f"champion_test_{k}": v for k, v in champion_scores.items()})
            else:
                logger.warning(
                    "champion v%s has other classes %s; not comparable", version.version, champion_classes
                )
    return Evaluation(scores, champion_scores, champion_version)


@stage(name="register")  # no retries: a retry after a partial success would add a version
def register_model(
    model: keras.Model,
    data: SplitData,
    image_size: int,
    evaluation: Evaluation,
    tags: dict[str, str],
    params: RegisterParams,
    parent_run_id: str,
) -> dict[str, Any]:
    """Log the pyfunc, create the version with lineage tags, set the aliases through the gate."""
    with stage_run("register", parent_run_id), scratch_dir() as tmp:
        mlflow.log_metrics({f"test_{k}": v for k, v in evaluation.metrics.items()})
        info = registry.log_classifier(model, data.class_names, image_size, tmp, Path(data.test.paths[0]))
        decision = registry.promotion_decision(
            evaluation.metrics, evaluation.champion_metrics, params.metric, params.min_delta
        )
        if evaluation.champion_version is not None and evaluation.champion_metrics is None:
            decision = registry.Decision(False, "champion not comparable (other classes); kept")
        version_tags = {
            **tags,
            **{f"test_{k}": f"{v:.4f}" for k, v in evaluation.metrics.items()},
            "promotion": decision.reason,
        }
        version = mlflow.register_model(info.model_uri, params.model_name, tags=version_tags)
        registry.set_aliases(params.model_name, version.version, decision.promote)
        mlflow.set_tags({"registered_version": version.version, "promotion": decision.reason})
        return {
            "model": params.model_name,
            "version": str(version.version),
            "aliases": registry.aliases_of(params.model_name, version.version),
            "promoted": decision.promote,
            "reason": decision.reason,
        }


@stage(name="pretrain")
def pretrain_backbone(
    data: SplitData, params: PretrainParams, image_size: int, parent_run_id: str
) -> dict[str, Any]:
    """Train the small CNN from scratch on the source data; register its backbone."""
    with stage_run("pretrain", parent_run_id):
        mlflow.log_params(flatten({"pretrain": vars(params)}))
        backbone = backbones.build_backbone(image_size, params.width)
        model, history = finetune.train_from_scratch(
            backbone,
            (data.train.x, data.train.y),
            (data.val.x, data.val.y),
            len(data.class_names),
            params.epochs,
            params.learning_rate,
            params.batch_size,
            patience=params.epochs,
            seed=params.seed,
        )
        log_history({"pretrain": history})
        probabilities = np.asarray(model.predict(data.test.x.astype("float32"), verbose=0))
        scores = evaluate.metrics(data.test.y, probabilities)
        mlflow.log_metrics({f"source_test_{k}": v for k, v in scores.items()})
        backbone.trainable = False
        info = registry.log_backbone(backbone)
        version = mlflow.register_model(
            info.model_uri, params.model_name, tags={"source_classes": json.dumps(data.class_names)}
        )
        mlflow.MlflowClient().set_registered_model_alias(params.model_name, params.alias, version.version)
    return {
        "model": params.model_name,
        "version": str(version.version),
        "alias": params.alias,
        "source_test": scores,
        "epochs": len(history["loss"]),
    }


def stage_timings(parent_run_id: str) -> dict[str, float]:
    """Seconds per stage, read back from the nested runs' start and end times."""
    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        order_by=["attributes.start_time ASC"],
    )
    return {
        r.data.tags.get("stage", r.info.run_name): round(
            ((r.info.end_time or time.time() * 1000) - r.info.start_time) / 1000, 1
        )
        for r in children
    }
