"""The machinery every flow shares: the flow's MLflow parent run (`tracked_flow`), one stage
in its two halves (`run_stage`), and the end of a run (`publish`).

- The compute half of a stage is a cached Prefect task (`flows.stages.caching`): it calls one
  `tasks/` function and returns its result, which Prefect persists and reuses while nothing it
  depends on changes.
- The logging half (`log_*`) runs in every flow run, reused or not, in the stage's nested MLflow
  run, so each run's page shows every stage, and returns one line saying what the stage did;
  `run_stage` joins the halves, times them, and puts that line in the Prefect log and on the
  terminal.
- `publish` ends a flow run: its Markdown summary becomes the MLflow run's description and a
  Prefect artifact, its per-class test results a Prefect table artifact."""

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
from prefect import Task, get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed, Failed, State

from flows.stages import caching  # noqa: F401 - whole-file result writes (see there)
from tasks.core import progress, runner
from tasks.core.config import (
    Params,
    Paths,
)
from tasks.data import lineage
from tasks.data import validate as validation
from tasks.models import determinism
from tasks.reporting import tracking
from tasks.reporting.summary import RunSummary
from tasks.reporting.summary import markdown as markdown_summary
from tasks.retention.keep import RESULT_KEY
from tasks.selection import candidates

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
    flow: str = ""  # the flow's name: train, retrain, reproduce, pretrain


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
    setup = tracking.WorkerSetup.current(params.reproducibility.deterministic)
    with (
        runner.using(runner.from_params(params.runner, paths.root, setup)),
        tracking.flow_run(name, tags, params.as_dict()) as parent,
    ):
        yield FlowRun(paths, parent.info.run_id, tags, force=force, flow=name)


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
    check_inputs = getattr(compute.cache_policy, "check_inputs", None)
    if check_inputs is not None:  # a cached stage: every input must have a fingerprint
        check_inputs(inputs)
    progress.say(f"== {name}")
    start = time.perf_counter()
    with tracking.stage_run(name, run.run_id):
        storage = run.paths.root / RESULTS_DIR
        stage_task = compute.with_options(result_storage=storage, refresh_cache=run.force)
        state = stage_task(return_state=True, **inputs)
        result = state.result()  # a failed stage raises its own exception here
        reused = state.name == "Cached"
        if reused:
            mlflow.set_tag("reused", "true")
        stored = getattr(getattr(state.data, "metadata", None), "storage_key", None)
        if stored:  # the result file's name: retention keeps the results that kept runs used
            mlflow.set_tag(RESULT_KEY, Path(stored).name)
        line = log(result, run, reused)
    run.seconds[name] = round(time.perf_counter() - start, 1)
    if reused:
        run.reused.append(name)
    done = "reused (nothing it depends on changed)" if reused else "done"
    get_run_logger().info("%s: %s (%s in %.1f s)", name, line, done.split(" ")[0], run.seconds[name])
    progress.say(f"   {name} {done} in {run.seconds[name]:.1f}s: {line}")
    return result


def name_run(run: FlowRun, *parts: str) -> None:
    """A readable name for the flow's run: flow, data version (8), backbone or architecture."""
    mlflow.MlflowClient().update_run(run.run_id, name="-".join(p for p in parts if p))


def tag_parent(run: FlowRun, tags: dict[str, str]) -> None:
    """Tags of the active stage run that the flow's run carries too (data version, backbone)."""
    mlflow.set_tags(tags)
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_tag(run.run_id, key, value)


def run_lineage(run: FlowRun) -> dict[str, str]:
    return {k: v for k, v in run.tags.items() if k in tracking.LINEAGE_TAGS}


def log_events(events: Path | None) -> None:
    """The TensorBoard event files of a training, as the stage run's `tensorboard/` artifacts."""
    if events is not None and events.is_dir():
        mlflow.log_artifacts(str(events), "tensorboard")
        mlflow.set_tag("tensorboard_logdir", str(events))


def say_resumed(resumed: dict[str, int], search: list[str] | None = None) -> None:
    """What a training went on from: each phase's checkpointed epoch, and what of a killed
    strategy search it kept (`search`: its trials, rungs, scratch epochs in words)."""
    for phase, epoch in resumed.items():
        get_run_logger().warning("%s: resumed from the checkpoint after epoch %d", phase, epoch)
    if search:
        get_run_logger().warning("search: resumed from the killed run's %s", " and ".join(search))


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
    headline(summary)
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


def headline(summary: RunSummary) -> None:
    """On the flow's own MLflow run, what its runs table sorts and compares, whatever the
    modality: `test_accuracy`, `test_macro_f1` (the evaluate child run has the rest), and the
    tags `modality` and `gate` (promoted, kept the champion, or not registered)."""
    if summary.test:
        mlflow.log_metrics({f"test_{k}": v for k, v in summary.test.items()})
    if summary.registered is not None:
        mlflow.set_tag("gate", "promoted" if summary.registered.promoted else "kept the champion")
    elif summary.test:
        mlflow.set_tag("gate", "not registered")


def version_tags(
    run: FlowRun,
    data: validation.ValidatedData,
    params: Params,
    start: candidates.Selection | None = None,
    transfer_set: dict[str, Any] | None = None,
) -> dict[str, str]:
    """What a registered version carries to be rebuilt: code and environment, data version,
    params, the backbone it started from (and that backbone's version and data), its run, and
    a distillation's teacher and transfer set (its folder, images and content digest)."""
    backbone = {}
    if start is not None:
        backbone = {"backbone": start.uri, **start.lineage, "logme": json.dumps(start.scores)}
    return {
        **run.tags,
        **data.lineage,
        **backbone,
        "mlflow_run_id": run.run_id,
        "modality": data.modality.name,
        "params": json.dumps(params.as_dict(), sort_keys=True),
        **({"distilled_from": params.finetune.distill_from} if params.finetune.distill_from else {}),
        **({"distill_transfer_set": json.dumps(transfer_set, sort_keys=True)} if transfer_set else {}),
    }
