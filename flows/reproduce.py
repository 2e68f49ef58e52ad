"""The reproduce flow: rebuild a registered version from what it recorded and compare."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.states import Failed, State

from flows.train import train_flow
from tasks.core.config import Paths
from tasks.registry import reproduce
from tasks.reporting import tracking
from tasks.reporting.summary import RunSummary


@flow(name="reproduce", validate_parameters=False)
def reproduce_flow(model: str, version: str, root: Path, tolerance: float) -> RunSummary | State:
    """Restore the version's data (DVC), rerun `train` with its recorded params and pinned
    backbone without registering, and set the recorded and new metrics side by side."""
    paths = Paths.from_root(root)
    tracking.configure(paths.mlflow_dir)
    record = reproduce.recorded(model, version)
    warnings = reproduce.differences(record, paths.root)
    scratch = paths.root / ".transferops" / "reproduce" / f"{model}-v{version}"
    try:
        data_dir = reproduce.restore_data(record, paths.root, scratch)
        state = train_flow(
            data_dir,
            record.params,
            paths.root,
            warm_start=record.warm_start_version is not None,
            warm_start_version=record.warm_start_version,
            register=False,
            flow_name="reproduce",
            extra_tags={"reproduce_of": f"{model}/{version}"},
            force=True,  # rebuilt, never reused: reusing the recorded training would prove nothing
            return_state=True,
        )
    finally:
        reproduce.remove_scratch(scratch)
    if not state.is_completed():
        return Failed(message=state.message)
    summary: RunSummary = state.result(raise_on_failure=False)
    summary.reproduction = reproduce.compare(record, summary.test, tolerance, warnings)
    return summary
