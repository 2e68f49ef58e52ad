"""The retrain flow: the scheduled job. Runs `train` warm-started from the champion, and only
when the data version differs from the champion's. `transferops schedule` deploys it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.states import Completed, Failed, State

from flows.train import train_flow
from tasks.config import load_params, project_root


@flow(name="retrain")
def retrain_flow(
    data_dir: str = "data/raw", params_file: str = "params.yaml", root: str | None = None
) -> dict[str, Any] | State:
    """Entry point of the deployment: reads params.yaml itself (parameters are JSON there)."""
    base = Path(root) if root else project_root()
    params = load_params(base / params_file if (base / params_file).exists() else None)
    state = train_flow(
        Path(data_dir), params, base, warm_start=True, only_if_new_data=True, return_state=True
    )
    # Returned as is, a subflow's state would be folded into "All states completed."; pass on
    # its summary, or its message ("data unchanged ...", "data validation failed ...").
    result = state.result(raise_on_failure=False)
    if state.is_completed():
        return result if isinstance(result, dict) else Completed(message=state.message)
    return Failed(message=state.message)
