"""`transferops gc`, and the same pass at the end of each retrain (`retention.after_retrain`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tasks.core import runlock
from tasks.core.config import Params, Paths


def collect(root: Path, params: Params, dry_run: bool) -> list[str]:
    """One retention pass (tasks.retention.sweep) holding the model's run lock, so no run of
    it is writing while its files go. Lines saying what was (or would be) freed."""
    from tasks.reporting import tracking
    from tasks.retention import sweep

    paths = Paths.from_root(root)
    with runlock.exclusive(paths.root, params.register.model_name):
        experiment_id = tracking.configure(paths.mlflow_dir)
        return sweep.sweep(paths.root, params, experiment_id, dry_run).lines()


def after_retrain(root: Path, params: Params) -> str:
    """The retrain flow's last step; its last line. A failure here is said, not raised: the
    round's model is registered already, and the next pass (or `transferops gc`) tries again."""
    from prefect import get_run_logger

    logger = get_run_logger()
    try:
        lines = collect(root, params, dry_run=False)
    except Exception as exc:  # the retrain itself succeeded
        line = f"gc after retrain failed: {exc}; `transferops gc` tries again"
        logger.warning(line)
        return line
    for line in lines:
        if not line.startswith("kept "):
            logger.info("gc: %s", line)
    return lines[-1]


def cmd_gc(args: argparse.Namespace, params: Params, paths: Paths) -> None:
    from flows.runtime import start_prefect_server, wait_for_prefect_server

    start_prefect_server()  # Prefect's flow-run history is pruned too
    wait_for_prefect_server()
    for line in collect(paths.root, params, args.dry_run):
        print(line)
