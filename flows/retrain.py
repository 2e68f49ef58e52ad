"""The retrain flow: the scheduled job. Runs `train` warm-started from the champion, and only
when the data version differs from the champion's. `transferops schedule` deploys it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.states import State

from flows.train import train_flow
from tasks.config import load_params, project_root


@flow(name="retrain")
def retrain_flow(
    data_dir: str = "data/raw", params_file: str = "params.yaml", root: str | None = None
) -> dict[str, Any] | State:
    """Entry point of the deployment: reads params.yaml itself (parameters are JSON there)."""
    base = Path(root) if root else project_root()
    params = load_params(base / params_file if (base / params_file).exists() else None)
    # The subflow's state becomes this flow's state, message ("data unchanged ...") included.
    return train_flow(Path(data_dir), params, base, warm_start=True, only_if_new_data=True, return_state=True)
