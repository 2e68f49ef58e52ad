"""Prefect tasks, one per stage. Each wrapper opens the stage's nested MLflow run, calls one
function from `tasks/`, logs what it returned, and times itself. No decisions here: each
lives in the `tasks/` module named in the call.

Results stay in memory (arrays and Keras models), so no task caches or persists them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

import mlflow
from prefect import get_run_logger, runtime, task
from prefect.cache_policies import NONE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed, Failed, State

from tasks import (
    backbones,
    checkpoints,
    datasets,
    determinism,
    evaluate,
    finetune,
    lineage,
    pretraining,
    progress,
    promotion,
    registry,
    selection,
    tracking,
)
from tasks import validate as validation
from tasks.config import (
    FinetuneParams,
    Params,
    Paths,
    PretrainParams,
    RegisterParams,
    SelectParams,
    SplitParams,
    ValidateParams,
)
from tasks.tracking import log_history, scratch_dir

stage = task(cache_policy=NONE, persist_result=False)


@dataclass
class FlowRun:
    paths: Paths
    run_id: str  # the MLflow parent run
    tags: dict[str, str]  # code and environment lineage: git commit, lock file, versions, Prefect run
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall time, in order


@contextmanager
def tracked_flow(
    name: str, params: Params, root: Path, extra_tags: dict[str, str] | None = None
) -> Iterator[FlowRun]:
    """Configure MLflow for the project at `root` and open the flow's parent run, which
    holds every param (the stages log none of their own)."""
    paths = Paths.from_root(root)
    experiment_id = tracking.configure(paths.mlflow_dir)
    close_dead_runs(experiment_id)
    determinism.configure(params.reproducibility.deterministic)
    tags = {
        "git_commit": lineage.git_commit(paths.root),
        "prefect_flow_run_id": str(runtime.flow_run.id),
        "deterministic": str(params.reproducibility.deterministic).lower(),
        **lineage.environment(),
        **(extra_tags or {}),
    }
    with tracking.flow_run(name, tags, params.as_dict()) as parent:
        yield FlowRun(paths, parent.info.run_id, tags)


@contextmanager
def stage_run(name: str, run: FlowRun) -> Iterator[None]:
    """The stage's nested MLflow run; its wall time goes to `run.seconds`."""
    progress.say(f"== {name}")
    start = time.perf_counter()
    with tracking.stage_run(name, run.run_id):
        yield
    run.seconds[name] = round(time.perf_counter() - start, 1)
    progress.say(f"   {name} done in {run.seconds[name]:.1f}s")


def close_dead_runs(experiment_id: str) -> None:
    """Runs left RUNNING by a process that died (kill -9): KILLED in MLflow, Crashed in Prefect,
    each said in one log line."""
    logger = get_run_logger()
    for run in tracking.close_dead_runs(experiment_id):
        logger.warning(
            "closed MLflow run %s (%s) left RUNNING by process %s, which is gone: KILLED",
            run.run_id,
            run.name,
            run.pid,
        )
        if run.prefect_flow_run_id and run.prefect_flow_run_id != str(runtime.flow_run.id):
            try:
                with get_client(sync_client=True) as client:
                    flow_run = client.read_flow_run(UUID(run.prefect_flow_run_id))
                    if not flow_run.state or not flow_run.state.is_final():
                        crashed = Crashed(message=f"process {run.pid} died")
                        client.set_flow_run_state(flow_run.id, crashed, force=True)
                        task_runs = client.read_task_runs(
                            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
                        )
                        for task_run in task_runs:
                            if task_run.state and not task_run.state.is_final():
                                client.set_task_run_state(task_run.id, crashed, force=True)
                        logger.warning(
                            "marked Prefect flow run %s and its open task runs crashed", flow_run.name
                        )
            except (ObjectNotFound, ValueError):
                pass  # that run lived on another Prefect server


def failed(message: str) -> State:
    """End the parent run as FAILED; the returned state fails the Prefect flow run with
    `message` (no traceback: the message names the files and reasons)."""
    mlflow.end_run("FAILED")
    return Failed(message=message)


@stage(name="validate")
def validate_data(data_dir: Path, params: ValidateParams, run: FlowRun) -> validation.ValidatedData:
    """Ingest (hash + decode every file) and run the Great Expectations suites."""
    with stage_run("validate", run), scratch_dir() as tmp:
        data = validation.validate_folder(data_dir, params, tmp / "data_docs")
        mlflow.set_tags(data.lineage)
        client = mlflow.MlflowClient()
        for key, value in data.lineage.items():  # the flow's run carries the data version too
            client.set_tag(run.run_id, key, value)
        mlflow.log_metrics(data.report.statistics)
        manifest_path = tmp / "manifest.parquet"
        data.manifest.to_parquet(manifest_path)
        mlflow.log_artifact(str(manifest_path))
        mlflow.log_artifacts(str(data.report.docs_dir), "data_docs")
        mlflow.log_dict(
            {
                "success": data.report.success,
                "problems": data.report.problems,
                "ignored": data.report.ignored,
            },
            "validation.json",
        )
        if not data.report.success:
            mlflow.set_tag("outcome", "validation failed")
    return data


@stage(name="split")
def split_data(
    data: validation.ValidatedData, data_dir: Path, params: SplitParams, image_size: int, run: FlowRun
) -> datasets.SplitData:
    """Assign splits by content hash and decode each split's images once."""
    with stage_run("split", run):
        splits = datasets.prepare_splits(data.manifest, data_dir, params, image_size)
        mlflow.log_metrics({f"n_{name}": n for name, n in splits.sizes().items()})
        mlflow.log_dict(splits.counts(), "split_counts.json")
        mlflow.log_table(splits.table, "split_table.json")
    return splits


@stage(name="select")
def select_backbone(
    params: SelectParams,
    data: datasets.SplitData,
    image_size: int,
    seed: int,
    warm_start_from: str | None,
    warm_start_version: str | None,
    run: FlowRun,
) -> selection.Selection:
    """The champion to warm-start from, or the candidate backbone LogME ranks first."""
    with stage_run("select", run):
        start = selection.select(
            params.candidates,
            data.train,
            data.class_names,
            image_size,
            params.max_samples,
            seed,
            warm_start_from,
            warm_start_version,
        )
        if start.scores:
            mlflow.log_metrics({f"logme.{k}": v for k, v in start.scores.items()})
        mlflow.log_dict(
            {"chosen": start.uri, "scores": start.scores, "samples": start.samples}, "selection.json"
        )
        client = mlflow.MlflowClient()
        for key, value in {"backbone": start.uri, **start.lineage}.items():
            mlflow.set_tag(key, value)
            client.set_tag(run.run_id, key, value)
    return start


@stage(name="finetune")
def finetune_model(
    start: selection.Selection,
    data: datasets.SplitData,
    params: FinetuneParams,
    data_version: str,
    run: FlowRun,
) -> finetune.FinetuneResult:
    """Phase 1 head on cached features, phase 2 top of the backbone at a lower rate; per-epoch
    checkpoints keyed by what is trained, so a killed run resumes."""
    with stage_run("finetune", run):
        inputs = {
            "data_version": data_version,
            "classes": data.class_names,
            "params": params.model_dump(),
            "start": {"uri": start.uri, **start.lineage},
            "code": checkpoints.source_hash(Path(finetune.__file__), Path(backbones.__file__)),
        }
        result = finetune.finetune(
            start.backbone,
            (data.train.x, data.train.y),
            (data.val.x, data.val.y),
            len(data.class_names),
            params,
            init_head=start.init_head,
            train_features=start.train_features,
            checkpoints=checkpoints.folder(run.paths.root, "finetune", inputs),
        )
        say_resumed(result.resumed)
        log_history(result.history)
        mlflow.log_dict({"unfrozen_layers": result.unfrozen}, "unfrozen_layers.json")
        mlflow.log_metrics({f"epochs.{phase}": len(h["loss"]) for phase, h in result.history.items()})
    return result


def say_resumed(resumed: dict[str, int]) -> None:
    """A resumed phase is said in the log and recorded on the stage's run."""
    for phase, epoch in resumed.items():
        get_run_logger().warning("%s: resumed from the checkpoint after epoch %d", phase, epoch)
    if resumed:
        mlflow.set_tag("resumed_from_epoch", json.dumps(resumed))


def log_test_report(report: evaluate.TestReport, class_names: list[str], prefix: str, title: str) -> None:
    """Metrics, per-class report and confusion matrix of one model, in the active run."""
    mlflow.log_metrics({f"{prefix}{k}": v for k, v in report.metrics.items()})
    mlflow.log_dict(report.per_class, "per_class_report.json")
    with scratch_dir() as tmp:
        png = evaluate.plot_confusion(report.confusion, class_names, tmp / "confusion_matrix.png", title)
        mlflow.log_artifact(str(png))


@stage(name="evaluate")
def evaluate_model(
    result: finetune.FinetuneResult, data: datasets.SplitData, model_name: str, run: FlowRun
) -> promotion.Evaluation:
    """Test metrics of the new model and, on the same test images, of the current champion."""
    with stage_run("evaluate", run):
        evaluation = promotion.evaluate_challenger(result.model, data, model_name)
        log_test_report(evaluation.challenger, data.class_names, "test_", "challenger (test split)")
        champion = evaluation.champion
        if champion.metrics is not None:
            mlflow.log_metrics({f"champion_test_{k}": v for k, v in champion.metrics.items()})
        mlflow.log_dict(vars(champion), "champion.json")
    return evaluation


@stage(name="register")  # no retries: a retry after a partial success would add a version
def register_model(
    result: finetune.FinetuneResult,
    data: datasets.SplitData,
    image_size: int,
    evaluation: promotion.Evaluation,
    tags: dict[str, str],
    params: RegisterParams,
    run: FlowRun,
) -> registry.Registered:
    """Log the pyfunc, create the version with lineage tags, set the aliases through the gate."""
    with stage_run("register", run), scratch_dir() as tmp:
        registered = promotion.register_candidate(
            result.model,
            data,
            image_size,
            evaluation,
            tags,
            params.model_name,
            params.metric,
            params.min_delta,
            tmp,
        )
        mlflow.set_tags({"registered_version": registered.version, "promotion": registered.reason})
    return registered


@stage(name="pretrain")
def pretrain_backbone(
    data: datasets.SplitData, params: PretrainParams, image_size: int, data_version: str, run: FlowRun
) -> pretraining.PretrainResult:
    """Train the small CNN from scratch on the source data and score it on its test split."""
    with stage_run("pretrain", run):
        inputs = {
            "data_version": data_version,
            "image_size": image_size,
            "params": params.model_dump(),
            "code": checkpoints.source_hash(Path(pretraining.__file__), Path(finetune.__file__)),
        }
        result = pretraining.pretrain(
            data, params, image_size, checkpoints.folder(run.paths.root, "pretrain", inputs)
        )
        say_resumed(result.resumed)
        log_history({"pretrain": result.history})
        log_test_report(result.test, data.class_names, "source_test_", "pretraining (source test split)")
    return result


@stage(name="register")
def register_backbone(
    result: pretraining.PretrainResult,
    data: datasets.SplitData,
    params: PretrainParams,
    tags: dict[str, str],
    run: FlowRun,
) -> registry.Registered:
    """Register the frozen backbone under its alias (what `registry:` candidates load)."""
    with stage_run("register", run):
        registered = registry.register_backbone(
            result.backbone, params.model_name, params.alias, data.class_names, tags
        )
        mlflow.set_tags({"registered_version": registered.version})
    return registered


def version_tags(
    run: FlowRun, data: validation.ValidatedData, params: Params, start: selection.Selection | None = None
) -> dict[str, str]:
    """What a registered version carries to be rebuilt: code and environment, data version,
    params, the backbone it started from (and that backbone's version and data), its run."""
    backbone = {"backbone": start.uri, **start.lineage} if start is not None else {}
    return {
        **run.tags,
        **data.lineage,
        **backbone,
        "mlflow_run_id": run.run_id,
        "params": json.dumps(params.as_dict(), sort_keys=True),
    }
