"""The stages, each in two halves, and the flow's MLflow parent run. No decisions here: each
lives in the `tasks/` module named in the call.

- The compute half is a cached Prefect task (`flows.caching`): it calls one `tasks/` function
  and returns its result, which Prefect persists and reuses while nothing it depends on changes.
- The logging half (`log_*`) runs in every flow run, reused or not, in the stage's nested MLflow
  run, so each run's page shows every stage, and returns one line saying what the stage did
  (counts, the chosen backbone, epochs, metrics); `run_stage` joins the halves, times them,
  and puts that line in the Prefect log and on the terminal.
- `publish` ends a flow run: its Markdown summary becomes the MLflow run's description and a
  Prefect artifact, its per-class test results a Prefect table artifact.
- Registration is a side effect and is not cached: the registry itself finds a version made
  from the same training (its `training_key` tag) instead of adding it again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import mlflow
import mlflow.data
from prefect import Task, get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed, Failed, State

from flows.caching import cached_stage, stage_key
from tasks import (
    checkpoints,
    datasets,
    determinism,
    drift,
    evaluate,
    finetune,
    lineage,
    pretraining,
    progress,
    promotion,
    registry,
    selection,
    strategy,
    tracking,
)
from tasks import validate as validation
from tasks.config import (
    AugmentParams,
    FinetuneParams,
    Params,
    Paths,
    PretrainParams,
    RegisterParams,
    ReproducibilityParams,
    RetrainParams,
    SearchParams,
    SelectParams,
    SplitParams,
    ValidateParams,
)
from tasks.summary import RunSummary
from tasks.summary import markdown as markdown_summary
from tasks.tracking import log_history, scratch_dir

stage = task(cache_policy=NONE, persist_result=False)  # a stage that is not cached
RESULTS_DIR = ".transferops/results"  # Prefect's persisted stage results, per project
T = TypeVar("T")
Logger = Callable[[T, "FlowRun", bool], str]  # (result, run, reused) -> what the stage did, in a line


@dataclass
class FlowRun:
    paths: Paths
    run_id: str  # the MLflow parent run
    tags: dict[str, str]  # code and environment lineage: git commit, lock file, versions, Prefect run
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall time, in order
    reused: list[str] = field(default_factory=list)  # stages whose cached result was reused
    force: bool = False  # recompute every stage (and overwrite its cached result)


@contextmanager
def tracked_flow(
    name: str, params: Params, root: Path, extra_tags: dict[str, str] | None = None, force: bool = False
) -> Iterator[FlowRun]:
    """Configure MLflow for the project at `root` and open the flow's parent run, which
    holds every param (the stages log none of their own). `force`: reuse no stage."""
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
        yield FlowRun(paths, parent.info.run_id, tags, force=force)


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


def run_stage(run: FlowRun, compute: Task[..., T], log: Logger[T], **inputs: Any) -> T:
    """One stage in its nested MLflow run: the cached compute task, then `log` (in every run,
    reused or not, so each run's page shows every stage), whose line goes to the Prefect log.
    Timed into `run.seconds`; a reused stage is said, tagged `reused` in MLflow, and listed in
    `run.reused`."""
    name = compute.name
    progress.say(f"== {name}")
    start = time.perf_counter()
    with tracking.stage_run(name, run.run_id):
        state = compute.with_options(result_storage=run.paths.root / RESULTS_DIR, refresh_cache=run.force)(
            return_state=True, **inputs
        )
        result = state.result()  # a failed stage raises its own exception here
        reused = state.name == "Cached"
        if reused:
            mlflow.set_tag("reused", "true")
        line = log(result, run, reused)
    run.seconds[name] = round(time.perf_counter() - start, 1)
    if reused:
        run.reused.append(name)
    done = "reused (nothing it depends on changed)" if reused else "done"
    get_run_logger().info("%s: %s (%s in %.1f s)", name, line, done.split(" ")[0], run.seconds[name])
    progress.say(f"   {name} {done} in {run.seconds[name]:.1f}s: {line}")
    return result


def validated(run: FlowRun, data_dir: Path, params: Params) -> validation.ValidatedData:
    """The validate stage, as every flow runs it (Data Docs under .transferops/data_docs)."""
    docs_root = run.paths.root / ".transferops" / "data_docs"
    return run_stage(
        run, validate_data, log_validation, data_dir=data_dir, params=params.validate, docs_root=docs_root
    )


def splits(
    run: FlowRun, data: validation.ValidatedData, data_dir: Path, params: Params
) -> datasets.SplitData:
    """The split stage, as every flow runs it."""
    return run_stage(
        run,
        split_data,
        log_split,
        data=data,
        data_dir=data_dir,
        params=params.split,
        image_size=params.data.image_size,
    )


def log_datasets(run: FlowRun, data: validation.ValidatedData, splits: datasets.SplitData) -> None:
    """The splits as MLflow dataset inputs of the flow's run (the UI's Datasets column): named
    `<folder>-<split>`, digest = the DVC data version, source = the folder, one row per image
    (path, label, sha256), the images per class as an input tag."""
    version, folder = data.lineage["data_version"], data.lineage["data_path"]
    counts = splits.counts()
    names = ("train", "val", "test")
    found = []
    for name in names:
        rows = splits.table[splits.table["split"] == name][["path", "label", "sha256"]].reset_index(drop=True)
        found.append(
            mlflow.data.from_pandas(
                rows, source=folder, targets="label", name=f"{Path(folder).name}-{name}", digest=version[:36]
            )
        )
    mlflow.log_inputs(found, list(names), [{"class_counts": json.dumps(counts[n])} for n in names])


def name_run(run: FlowRun, *parts: str) -> None:
    """A readable name for the flow's run: flow, data version (8), backbone or architecture."""
    mlflow.MlflowClient().update_run(run.run_id, name="-".join(p for p in parts if p))


def tag_parent(run: FlowRun, tags: dict[str, str]) -> None:
    """Tags of the active stage run that the flow's run carries too (data version, backbone)."""
    mlflow.set_tags(tags)
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_tag(run.run_id, key, value)


@cached_stage(
    "validate", code=("ingest", "validate", "lineage", "images", "data_docs"), folders=("data_dir",)
)
def validate_data(data_dir: Path, params: ValidateParams, docs_root: Path) -> validation.ValidatedData:
    """Ingest (hash + decode every file) and run the Great Expectations suites; the Data Docs
    go to `docs_root/<key>`."""
    return validation.validate_folder(data_dir, params, docs_root / stage_key()[:16])


def log_validation(data: validation.ValidatedData, run: FlowRun, reused: bool) -> str:
    tag_parent(run, data.lineage)
    mlflow.log_metrics(data.report.statistics)
    with scratch_dir() as tmp:
        manifest_path = tmp / "manifest.parquet"
        data.manifest.to_parquet(manifest_path)
        mlflow.log_artifact(str(manifest_path))
    docs = data.report.docs_dir
    if docs is not None and docs.is_dir():
        mlflow.log_artifacts(str(docs), "data_docs")
    mlflow.log_dict(
        {"success": data.report.success, "problems": data.report.problems, "ignored": data.report.ignored},
        "validation.json",
    )
    if not data.report.success:
        mlflow.set_tag("outcome", "validation failed")
        return f"FAILED: {len(data.report.problems)} problem(s) in {data.lineage['data_path']}"
    classes = data.manifest["label"].nunique()
    ignored = f", {len(data.report.ignored)} hidden files skipped" if data.report.ignored else ""
    return (
        f"{len(data.manifest)} images in {classes} classes passed every expectation{ignored}; "
        f"data version {data.lineage['data_version'][:8]}"
    )


@cached_stage("split", code=("datasets", "split", "ingest", "images"))
def split_data(
    data: validation.ValidatedData, data_dir: Path, params: SplitParams, image_size: int
) -> datasets.SplitData:
    """Assign splits by content hash and decode each split's images once."""
    return datasets.prepare_splits(data.manifest, data_dir, params, image_size)


def log_split(splits: datasets.SplitData, run: FlowRun, reused: bool) -> str:
    mlflow.log_metrics({f"n_{name}": n for name, n in splits.sizes().items()})
    mlflow.log_dict(splits.counts(), "split_counts.json")
    mlflow.log_table(splits.table, "split_table.json")
    return " / ".join(f"{name} {n}" for name, n in splits.sizes().items()) + " images"


@cached_stage("drift", code=("drift", "backbones", "registry"))
def measure_drift(
    data: datasets.SplitData, model_name: str, champion: str, params: RetrainParams
) -> drift.Measurement | None:
    """MMD² between version `champion`'s training images and this training split, on its backbone."""
    return drift.measure(model_name, champion, data.train.x, params.drift_samples, params.drift_permutations)


def log_drift(measured: drift.Measurement | None, run: FlowRun, reused: bool) -> str:
    if measured is None:
        mlflow.set_tag("drift", "champion keeps no reference sample")
        return "not measured: the champion keeps no reference sample"
    report = measured.report
    mlflow.log_metrics({"drift_mmd2": report.mmd2, "drift_p_value": report.p_value})
    mlflow.log_dict({**report.summary(), "null": report.null}, "drift.json")
    with scratch_dir() as tmp:
        mlflow.log_artifact(str(drift.plot(report, measured.reference, measured.current, tmp / "drift.png")))
    return f"MMD² {report.mmd2:.6f}, p={report.p_value:.3g} against the champion's training sample"


def publish_decision(run: FlowRun, decision: drift.RetrainDecision) -> None:
    """The retrain decision where people look: the log, the MLflow run, a Prefect artifact."""
    get_run_logger().info("retrain: %s: %s", "train" if decision.train else "skip", decision.reason)
    mlflow.MlflowClient().set_tag(run.run_id, "retrain_decision", decision.reason)
    create_markdown_artifact(
        key="retrain-decision",
        markdown=f"**{'train' if decision.train else 'skip'}**: {decision.reason}",
        description="Why this retrain trained or skipped",
    )


@cached_stage("select", code=("selection", "logme", "backbones", "registry"))
def select_backbone(
    params: SelectParams,
    top_k: int,
    data: datasets.SplitData,
    image_size: int,
    seed: int,
    warm_start_from: str | None,
    warm_start_version: str | None,
    registry_state: dict[str, str],
) -> selection.Selection:
    """The champion to warm-start from, or the candidate backbone LogME ranks first (and the
    next `top_k - 1`: only the strategy search uses them).
    `registry_state` (what the candidates resolve to now) only keys the cache."""
    start = selection.select(
        params.candidates,
        data.train,
        data.class_names,
        image_size,
        params.max_samples,
        seed,
        warm_start_from,
        warm_start_version,
        top_k,
    )
    start.fingerprint = stage_key()
    return start


def log_selection(start: selection.Selection, run: FlowRun, reused: bool) -> str:
    if start.scores:
        mlflow.log_metrics({f"logme.{k}": v for k, v in start.scores.items()})
    kept = [r.uri for r in start.runners_up]
    mlflow.log_dict(
        {"chosen": start.uri, "runners_up": kept, "scores": start.scores, "samples": start.samples},
        "selection.json",
    )
    tag_parent(run, {"backbone": start.uri, **start.lineage})
    if not start.scores:
        return f"warm start from {start.uri}"
    scores = ", ".join(f"{k} {v:.4f}" for k, v in start.scores.items())
    also = f"; kept {', '.join(kept)} for the strategy search" if kept else ""
    return f"chose {start.uri} (LogME on {start.samples} images: {scores}){also}"


@cached_stage("finetune", code=("finetune", "strategy", "backbones", "checkpoints"))
def finetune_model(
    start: selection.Selection,
    data: datasets.SplitData,
    params: FinetuneParams,
    search: SearchParams,
    augment: AugmentParams,
    reproducibility: ReproducibilityParams,
    root: Path,
) -> finetune.FinetuneResult:
    """A fresh start with `search.enabled`: Hyperband chooses the strategy (tasks/strategy.py),
    and the backbone among LogME's best `select.top_k`.
    Otherwise (or warm-started from the champion) the fixed recipe: phase 1 head on cached
    features, phase 2 top of the backbone at a lower rate. Checkpoints under `root`, keyed like
    the result, so a killed run resumes. `reproducibility` only keys the cache."""
    key = stage_key()
    train, val = (data.train.x, data.train.y), (data.val.x, data.val.y)
    folder = checkpoints.folder(root, "finetune", key)
    events = checkpoints.events_folder(root, "finetune", key)
    if search.enabled and start.init_head is None:
        found = strategy.search(
            start.backbones(), train, val, len(data.class_names), search, params, augment, folder, events
        )
        result = strategy.as_finetune_result(found, events)
    else:
        result = finetune.finetune(
            start.backbone,
            train,
            val,
            len(data.class_names),
            params,
            init_head=start.init_head,
            train_features=start.train_features,
            checkpoints=folder,
            events=events,
        )
    say_resumed(result.resumed)
    result.fingerprint = key
    return result


def searched_backbone(
    run: FlowRun, start: selection.Selection, result: finetune.FinetuneResult
) -> selection.Selection:
    """The selection with the backbone the strategy search fine-tuned (a runner-up it may have
    preferred to LogME's first), retagged on the flow's run."""
    if not result.search or result.search["backbone"] == start.uri:
        return start
    start = start.pick(result.search["backbone"])
    client = mlflow.MlflowClient()
    for key, value in {"backbone": start.uri, **start.lineage}.items():
        client.set_tag(run.run_id, key, value)
    return start


def log_training(result: finetune.FinetuneResult, run: FlowRun, reused: bool) -> str:
    if result.resumed and not reused:
        mlflow.set_tag("resumed_from_epoch", json.dumps(result.resumed))
    log_history(result.history)
    log_events(result.events)
    mlflow.log_dict({"unfrozen_layers": result.unfrozen}, "unfrozen_layers.json")
    mlflow.log_metrics({f"epochs.{phase}": len(h["loss"]) for phase, h in result.history.items()})
    if result.search is None:
        return training_line(result.history)
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


def run_lineage(run: FlowRun) -> dict[str, str]:
    return {k: v for k, v in run.tags.items() if k in tracking.LINEAGE_TAGS}


def training_line(history: dict[str, dict[str, list[float]]]) -> str:
    """ "head 12 epochs (val_accuracy 0.9125), finetune 6 epochs (val_accuracy 0.9250)"."""
    parts = []
    for phase, series in history.items():
        best = f" (best val_accuracy {max(series['val_accuracy']):.4f})" if series.get("val_accuracy") else ""
        parts.append(f"{phase} {len(series.get('loss', []))} epochs{best}")
    return ", ".join(parts) or "no epochs"


def log_events(events: Path | None) -> None:
    """The TensorBoard event files of a training, as the stage run's `tensorboard/` artifacts."""
    if events is not None and events.is_dir():
        mlflow.log_artifacts(str(events), "tensorboard")
        mlflow.set_tag("tensorboard_logdir", str(events))


def say_resumed(resumed: dict[str, int]) -> None:
    for phase, epoch in resumed.items():
        get_run_logger().warning("%s: resumed from the checkpoint after epoch %d", phase, epoch)


def log_test_report(report: evaluate.TestReport, prefix: str, title: str) -> None:
    """Metrics, per-class report and confusion matrix of one model, in the active run."""
    mlflow.log_metrics({f"{prefix}{k}": v for k, v in report.metrics.items()})
    mlflow.log_metric(f"{prefix}ece", report.calibration["ece"])
    mlflow.log_dict(report.per_class, "per_class_report.json")
    mlflow.log_dict({"intervals": report.intervals, "calibration": report.calibration}, "test_details.json")
    mlflow.log_dict(report.mistakes, "confident_mistakes.json")
    with scratch_dir() as tmp:
        mlflow.log_artifact(
            str(evaluate.plot_reliability(report.calibration, tmp / "reliability.png", title))
        )
        gallery = evaluate.plot_mistakes(report, tmp / "confident_mistakes.png", f"{title}: surest mistakes")
        if gallery is not None:
            mlflow.log_artifact(str(gallery))
        png = tmp / "confusion_matrix.png"
        evaluate.plot_confusion(report.confusion, report.class_names, png, title)
        mlflow.log_artifact(str(png))


@cached_stage("evaluate", code=("promotion", "evaluate", "registry", "serving", "images"))
def evaluate_model(
    result: finetune.FinetuneResult, data: datasets.SplitData, model_name: str, champion: str | None
) -> promotion.Evaluation:
    """Test metrics of the new model and, on the same test images, of version `champion`."""
    return promotion.evaluate_challenger(result.model, data, model_name, champion)


def log_evaluation(evaluation: promotion.Evaluation, run: FlowRun, reused: bool) -> str:
    log_test_report(evaluation.challenger, "test_", "challenger (test split)")
    champion = evaluation.champion
    if champion.metrics is not None:
        mlflow.log_metrics({f"champion_test_{k}": v for k, v in champion.metrics.items()})
    mlflow.log_dict({k: v for k, v in vars(champion).items() if k != "predicted"}, "champion.json")
    line = f"{scores(evaluation.challenger.metrics)} on {len(evaluation.challenger.predicted)} test images"
    if champion.version is not None:
        line += f"; champion v{champion.version}: {scores(champion.metrics or {}) or 'not comparable'}"
    return line


def scores(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())


@stage(name="register")  # not cached, no retries: registration is found again by TRAINING_KEY
def register_model(
    result: finetune.FinetuneResult,
    data: datasets.SplitData,
    image_size: int,
    evaluation: promotion.Evaluation,
    tags: dict[str, str],
    params: RegisterParams,
    run: FlowRun,
) -> registry.Registered:
    """Log the pyfunc, create the version with lineage tags, set the aliases through the gate;
    or find the version this very training was registered as before."""
    with stage_run("register", run), scratch_dir() as tmp:
        registered = promotion.register_candidate(
            result.model,
            data,
            image_size,
            evaluation,
            {**tags, registry.TRAINING_KEY: result.fingerprint, **strategy_tag(result)},
            params,
            tmp,
        )
        mlflow.set_tags({"registered_version": registered.version, "promotion": registered.reason})
    get_run_logger().info(
        "register: %s v%s (aliases %s): %s",
        registered.model,
        registered.version,
        ", ".join(registered.aliases) or "none",
        registered.reason,
    )
    return registered


@cached_stage("pretrain", code=("pretraining", "finetune", "backbones", "checkpoints", "evaluate"))
def pretrain_backbone(
    data: datasets.SplitData,
    params: PretrainParams,
    image_size: int,
    reproducibility: ReproducibilityParams,
    root: Path,
) -> pretraining.PretrainResult:
    """Train the small CNN from scratch on the source data and score it on its test split."""
    key = stage_key()
    result = pretraining.pretrain(
        data,
        params,
        image_size,
        checkpoints.folder(root, "pretrain", key),
        checkpoints.events_folder(root, "pretrain", key),
    )
    say_resumed(result.resumed)
    result.fingerprint = key
    return result


def log_pretraining(result: pretraining.PretrainResult, run: FlowRun, reused: bool) -> str:
    if result.resumed and not reused:
        mlflow.set_tag("resumed_from_epoch", json.dumps(result.resumed))
    log_history({"pretrain": result.history})
    log_events(result.events)
    log_test_report(result.test, "source_test_", "pretraining (source test split)")
    return f"{training_line({'pretrain': result.history})}; source test {scores(result.test.metrics)}"


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
            result.backbone,
            params.model_name,
            params.alias,
            data.class_names,
            {**tags, registry.TRAINING_KEY: result.fingerprint},
        )
        mlflow.set_tags({"registered_version": registered.version})
    get_run_logger().info("register: %s v%s: %s", registered.model, registered.version, registered.reason)
    return registered


def test_details(report: evaluate.TestReport) -> dict[str, Any]:
    """What a RunSummary carries of a test report: the confusion matrix and per-class scores."""
    per_class = {
        c: {
            k: round(float(report.per_class[c][k]), 6) for k in ("precision", "recall", "f1-score", "support")
        }
        for c in report.class_names
        if c in report.per_class
    }
    matrix = {"classes": list(report.class_names), "matrix": report.confusion.tolist()}
    return {"confusion": matrix, "per_class": per_class}


def publish(run: FlowRun, summary: RunSummary, docs: Path | None = None) -> RunSummary:
    """Where people look at a finished run: its Markdown summary (with links to the MLflow run,
    the registered version and the Data Docs in `docs`) as the MLflow run's description and
    `summary.md`, and as the Prefect artifact `<flow>-summary`; the per-class test results as
    the Prefect table artifact `<flow>-per-class`."""
    links = {"MLflow run": tracking.run_url(run.run_id)}
    if summary.registered is not None:
        reg = summary.registered
        links[f"registered version v{reg.version}"] = tracking.version_url(reg.model, reg.version)
    if docs is not None and (docs / "index.html").is_file():
        links["Data Docs (Great Expectations; this folder, offline)"] = (
            (docs / "index.html").resolve().as_uri()
        )
    text = markdown_summary(summary, links)
    tracking.describe_run(run.run_id, text)
    mlflow.log_text(text, "summary.md")
    create_markdown_artifact(
        key=f"{summary.flow}-summary", markdown=text, description=f"What this {summary.flow} run did"
    )
    if summary.per_class:
        rows = [{"class": name, **values} for name, values in summary.per_class.items()]
        create_table_artifact(
            key=f"{summary.flow}-per-class", table=rows, description="Per-class results on the test split"
        )
    return summary


def version_tags(
    run: FlowRun, data: validation.ValidatedData, params: Params, start: selection.Selection | None = None
) -> dict[str, str]:
    """What a registered version carries to be rebuilt: code and environment, data version,
    params, the backbone it started from (and that backbone's version and data), its run."""
    backbone = {}
    if start is not None:
        backbone = {"backbone": start.uri, **start.lineage, "logme": json.dumps(start.scores)}
    return {
        **run.tags,
        **data.lineage,
        **backbone,
        "mlflow_run_id": run.run_id,
        "params": json.dumps(params.as_dict(), sort_keys=True),
    }
