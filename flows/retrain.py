"""The retrain flow: the scheduled job. Runs `train` warm-started from the champion, and only
when the data version differs from the champion's. `transferops schedule` deploys it with the
params resolved when it was scheduled; `transferops retrain` passes the CLI's."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.states import Failed, State

from flows.train import train_flow
from tasks.config import Params
from tasks.summary import RunSummary


@flow(name="retrain")
def retrain_flow(
    params: Params, root: str, data_dir: str | None = None, force: bool = False
) -> RunSummary | State:
    """Entry point of the deployment. `params` arrives as JSON there and is checked against
    the Params model (Prefect validates flow parameters)."""
    state = train_flow(
        Path(data_dir or params.data.raw),
        params,
        Path(root),
        warm_start=True,
        only_if_new_data=True,
        flow_name="retrain",
        force=force,
        return_state=True,
    )
    # Returned as is, a subflow's state would be folded into "All states completed."; pass on
    # its summary, or its message ("data validation failed ...").
    if state.is_completed():
        return state.result(raise_on_failure=False)
    return Failed(message=state.message)
