"""MLflow tracking: where the store is, one parent run per flow run, one nested run per stage."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import mlflow

EXPERIMENT = "transferops"


# Per variable, the URIs that `configure` chose itself. MLflow copies every URI it is
# given into the environment (for subprocesses), so without this record a later `configure`
# in the same process (another project root, a test) would mistake our own choice for the
# user's. Kept per variable: a user's tracking URI that we also used as the registry
# default is still the user's tracking URI.
_OWN_URIS: dict[str, set[str]] = {"MLFLOW_TRACKING_URI": set(), "MLFLOW_REGISTRY_URI": set()}


def _user_uri(variable: str) -> str | None:
    value = os.environ.get(variable)
    return value if value and value not in _OWN_URIS[variable] else None


# How long a write to an SQLite store waits for another writer (a second project's run, a
# `mlflow ui` query, `gc`). MLflow sets SQLite's busy timeout to 20 s on every session; SQLite's
# busy handler retries with growing sleeps for that long, then fails the write. A year of
# unattended runs meets longer locks than that (a VACUUM, a backup copying the file).
SQLITE_BUSY_S = 120
_MLFLOW_BUSY_PRAGMA = "PRAGMA busy_timeout = 20000;"


def _wait_longer_for_sqlite(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> tuple[str, Any]:
    """SQLAlchemy's before_cursor_execute hook: MLflow's busy-timeout pragma, with ours."""
    if statement == _MLFLOW_BUSY_PRAGMA:
        statement = f"PRAGMA busy_timeout = {SQLITE_BUSY_S * 1000};"
    return statement, parameters


def _patch_sqlite_busy_timeout() -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "before_cursor_execute", _wait_longer_for_sqlite):
        event.listen(Engine, "before_cursor_execute", _wait_longer_for_sqlite, retval=True)


@dataclass(frozen=True)
class WorkerSetup:
    """What a runner's worker process (tasks.core.runner) needs before it computes for a flow:
    the flow's MLflow store (registry candidates load from it) and its determinism. Picklable,
    and nothing in it talks to Prefect: a worker never needs its API."""

    tracking_uri: str
    registry_uri: str
    deterministic: bool

    @classmethod
    def current(cls, deterministic: bool) -> WorkerSetup:
        return cls(mlflow.get_tracking_uri(), mlflow.get_registry_uri(), deterministic)

    def __call__(self) -> None:
        from tasks.models import determinism

        _patch_sqlite_busy_timeout()
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.registry_uri)
        determinism.configure(self.deterministic)


def configure(mlflow_dir: Path, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at $MLFLOW_TRACKING_URI, else the local store in `mlflow_dir`
    (SQLite database + artifact folder). Returns the experiment id."""
    _patch_sqlite_busy_timeout()
    uri = _user_uri("MLFLOW_TRACKING_URI")
    artifact_location = None
    if not uri:
        mlflow_dir.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{mlflow_dir / 'mlflow.db'}"
        artifact_location = (mlflow_dir / "artifacts").as_uri()
        _OWN_URIS["MLFLOW_TRACKING_URI"].add(uri)
    registry_uri = _user_uri("MLFLOW_REGISTRY_URI")
    if not registry_uri:
        registry_uri = uri
        _OWN_URIS["MLFLOW_REGISTRY_URI"].add(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry_uri)
    found = mlflow.get_experiment_by_name(experiment)
    experiment_id = (
        found.experiment_id
        if found
        else mlflow.create_experiment(experiment, artifact_location=artifact_location)
    )
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


# Tags every stage run inherits from its flow's parent run.
LINEAGE_TAGS = ("git_commit", "prefect_flow_run_id", "data_version", "data_dvc_state", "data_path")


def process_tags() -> dict[str, str]:
    """Which process owns a run: a run left RUNNING by a process that is gone is closed later."""
    return {"host": socket.gethostname(), "pid": str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class ClosedRun:
    run_id: str
    name: str
    pid: str
    prefect_flow_run_id: str | None


def close_dead_runs(experiment_id: str) -> list[ClosedRun]:
    """Mark KILLED every run of this host left RUNNING by a process that no longer exists
    (a `kill -9`, a power cut); returns them, so the caller can say which."""
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    stale = client.search_runs(
        [experiment_id], f"attributes.status = 'RUNNING' and tags.host = '{host}'", max_results=500
    )
    closed = []
    for run in stale:
        pid = run.data.tags.get("pid", "")
        if not pid.isdigit() or _alive(int(pid)):
            continue
        client.set_terminated(run.info.run_id, "KILLED")
        closed.append(
            ClosedRun(run.info.run_id, run.info.run_name or "", pid, run.data.tags.get("prefect_flow_run_id"))
        )
    return closed


@contextmanager
def stage_run(stage: str, parent_run_id: str) -> Iterator[mlflow.ActiveRun]:
    """A nested run for one stage under the flow's parent run (explicit parent: thread-safe),
    carrying the parent's lineage tags."""
    parent_tags = mlflow.MlflowClient().get_run(parent_run_id).data.tags
    tags = {k: parent_tags[k] for k in LINEAGE_TAGS if k in parent_tags}
    with mlflow.start_run(
        run_name=stage,
        nested=True,
        parent_run_id=parent_run_id,
        tags={"stage": stage, **tags, **process_tags()},
    ) as run:
        yield run


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and tuples become strings."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value, default=str)
        else:
            out[name] = value
    return out


def log_history(history: dict[str, dict[str, list[float]]]) -> None:
    """Per-epoch metrics as MLflow metric series: `<phase>.<metric>` at step = epoch."""
    for phase, series in history.items():
        for metric, values in series.items():
            for epoch, value in enumerate(values):
                mlflow.log_metric(f"{phase}.{metric}", value, step=epoch)


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary folder for files on their way to the artifact store."""
    with tempfile.TemporaryDirectory(prefix="transferops-") as tmp:
        yield Path(tmp)


@contextmanager
def flow_run(name: str, tags: dict[str, str], params: dict[str, Any]) -> Iterator[mlflow.ActiveRun]:
    """The parent run of one flow run: lineage tags, every param flattened, params.json, and
    MLflow's system metrics (CPU, memory, disk, network every 10 s; psutil is a dependency)."""
    with mlflow.start_run(
        run_name=name,
        tags={"flow": name, **tags, **process_tags()},
        log_system_metrics=True,
    ) as run:
        mlflow.log_params(flatten(params))
        mlflow.log_dict(params, "params.json")
        yield run


LOCAL_UI = "http://127.0.0.1:5000"  # where the README's `mlflow ui` serves a local store


def ui_url() -> str:
    """The MLflow UI of the tracking store in use: the server itself, or `mlflow ui`'s default."""
    uri = mlflow.get_tracking_uri()
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI


def run_url(run_id: str) -> str:
    run = mlflow.MlflowClient().get_run(run_id)
    return f"{ui_url()}/#/experiments/{run.info.experiment_id}/runs/{run_id}"


def version_url(model: str, version: str) -> str:
    return f"{ui_url()}/#/models/{quote(model, safe='')}/versions/{quote(str(version), safe='')}"


def describe_run(run_id: str, text: str) -> None:
    """The run's description in the MLflow UI (the `mlflow.note.content` tag, Markdown)."""
    mlflow.MlflowClient().set_tag(run_id, "mlflow.note.content", text)
