"""The retrain flow: the scheduled job. It trains only when there is something new: a data
version the champion was not trained on, and (with `retrain.require_drift`) drift measured
against the champion's training sample (`tasks.promotion.drift.decide`). Then it runs the train
stages (`flows.train.train_run`) warm-started from the champion, in its own MLflow run.
`transferops schedule` deploys it with the params resolved when it was scheduled;
`transferops retrain` passes the CLI's."""

from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import flow
from prefect.states import State

from flows import housekeeping
from flows.stages import drift as drift_stage
from flows.stages import flowrun, split, validate
from flows.train import train_run
from tasks.core import runlock
from tasks.core.config import Params
from tasks.data import tables
from tasks.promotion import drift
from tasks.registry import versions
from tasks.reporting.summary import RunSummary


@flow(name="retrain")
def retrain_flow(
    params: Params, root: str, data_dir: str | None = None, force: bool = False
) -> RunSummary | State:
    """Entry point of the deployment. `params` arrives as JSON there and is checked against
    the Params model (Prefect validates flow parameters). One round, then (with
    `retention.after_retrain`) the retention pass of `transferops gc`."""
    with runlock.exclusive(Path(root), params.register.model_name):
        outcome = retrain_round(params, Path(root), data_dir, force)
        if params.retention.after_retrain:
            line = housekeeping.after_retrain(Path(root), params)
            if isinstance(outcome, RunSummary):
                outcome.gc = line
    return outcome


def retrain_round(params: Params, root: Path, data_dir: str | None, force: bool) -> RunSummary | State:
    """Validate; train (warm-started from the champion) when the data is new and, if asked,
    drifted; else say why not."""
    model_name = params.register.model_name
    with flowrun.tracked_flow("retrain", params, root, force=force) as run:
        given = run.paths.resolve(Path(data_dir or params.data.raw))
        folder = tables.data_folder(given, run.paths.root, params)
        data = validate.validated(run, folder, params)
        if not data.report.success:
            return flowrun.failed(data.report.message(folder))
        version = data.lineage["data_version"]
        champion = versions.champion_version(model_name)
        trained_on = versions.version_tags(model_name, champion).get("data_version") if champion else None
        if trained_on == version:
            return skip(run, version, drift.decide(champion, False, None, 0, False))
        splits = split.splits(run, data, folder, params)
        split.log_datasets(run, data, splits)
        measured, decision = None, None
        if champion is not None:
            measured = flowrun.run_stage(
                run,
                drift_stage.measure_drift,
                drift_stage.log_drift,
                data=splits,
                model_name=model_name,
                champion=champion,
                params=params.retrain,
            )
            decision = drift.decide(
                champion,
                True,
                measured.report if measured else None,
                params.retrain.drift_alpha,
                params.retrain.require_drift,
            )
            if not decision.train:
                return skip(run, version, decision, measured)
            drift_stage.publish_decision(run, decision)
        return train_run(
            run,
            data,
            splits,
            params,
            champion,
            warm_start_from=model_name,
            retrain=(measured, decision) if decision else None,
        )


def skip(
    run: flowrun.FlowRun,
    data_version: str,
    decision: drift.RetrainDecision,
    measured: drift.Measurement | None = None,
) -> RunSummary:
    """A retrain that trains nothing: the decision published, the run tagged."""
    drift_stage.publish_decision(run, decision)
    mlflow.set_tag("outcome", "skipped")
    summary = RunSummary(
        run.flow,
        run.run_id,
        skipped=decision.reason,
        data_version=data_version,
        stage_seconds=run.seconds,
        reused=run.reused,
        drift=measured.report.summary() if measured else None,
    )
    return flowrun.publish(run, summary)
