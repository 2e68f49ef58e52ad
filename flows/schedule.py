"""Scheduled retraining: the retrain flow as a Prefect deployment on a cron schedule.

`deploy_retrain` registers the deployment with the Prefect server (PREFECT_API_URL) for a
process work pool; `prefect worker start --pool <pool>` then runs it when due. The server's
scheduler creates the runs, so use a long-lived `prefect server start`, not the temporary one.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists

from flows.retrain import retrain_flow
from tasks.core.config import Params

CODE_ROOT = Path(__file__).resolve().parents[1]  # where flows/ lives; the worker runs it from here
DEPLOYMENT = "scheduled-retrain"
ENTRYPOINT = "flows/retrain.py:retrain_flow"
DESCRIPTION = (
    "transferops retrain: when the data version changed, measure drift against the champion, "
    "fine-tune warm-started from it, and promote through the gate. Each run publishes a "
    "summary and a per-class table as artifacts; MLflow has the rest."
)
TAGS = ["transferops", "retrain"]


def ensure_process_pool(name: str) -> None:
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=name, type="process"))


def retrain_parameters(params: Params, root: Path, data_dir: str | None) -> dict[str, object]:
    """The deployment's parameters: the params resolved now (file + --set), as JSON."""
    return {"params": params.as_dict(), "root": str(root), "data_dir": data_dir}


def deploy_retrain(cron: str, root: Path, params: Params, data_dir: str | None, pool: str) -> UUID:
    """Create (or update) the deployment `retrain/scheduled-retrain` on `cron`; its runs use
    the project (data, MLflow store) at `root` and exactly `params` (schedule again to change them)."""
    ensure_process_pool(pool)
    source = retrain_flow.from_source(source=str(CODE_ROOT), entrypoint=ENTRYPOINT)
    return source.deploy(
        name=DEPLOYMENT,
        work_pool_name=pool,
        cron=cron,
        parameters=retrain_parameters(params, root, data_dir),
        description=DESCRIPTION,
        tags=TAGS,
        concurrency_limit=1,  # one retrain at a time; the project lock guards other runs too
        build=False,
        push=False,
        print_next_steps=False,
        ignore_warnings=True,  # the ".serve is simpler" hint; `schedule --serve` offers that
    )


def serve_retrain(cron: str, root: Path, params: Params, data_dir: str | None) -> None:
    """Run the schedule from this process (blocks): no work pool or worker needed."""
    retrain_flow.serve(
        name=DEPLOYMENT,
        cron=cron,
        parameters=retrain_parameters(params, root, data_dir),
        description=DESCRIPTION,
        tags=TAGS,
    )
