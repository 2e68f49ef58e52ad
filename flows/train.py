"""The train flow: validate -> split -> select -> finetune -> evaluate -> register (+ promote)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import mlflow
from prefect import flow
from prefect.states import State

from flows import stages
from tasks import drift, registry, runlock, selection
from tasks.config import Params
from tasks.summary import RunSummary


@flow(name="train", validate_parameters=False)
def train_flow(
    data_dir: Path,
    params: Params,
    root: Path,
    warm_start: bool = False,
    only_if_new_data: bool = False,
    flow_name: str = "train",
    warm_start_version: str | None = None,
    register: bool = True,
    extra_tags: dict[str, str] | None = None,
    force: bool = False,
) -> RunSummary | State:
    """Fine-tune a pretrained backbone on `data_dir` and register the result. `warm_start`
    starts from the champion (or from `warm_start_version`) when it knows the same classes;
    `only_if_new_data` (retrain) skips the run when the champion was trained on this very data
    version, else measures drift against the champion and trains as `drift.decide` says;
    `register=False` stops after evaluation (a reproduction registers nothing). A stage whose
    inputs are unchanged since an earlier run is reused (`flows.caching`); `force` recomputes."""
    model_name = params.register.model_name
    with (
        runlock.exclusive(root, model_name) if register else nullcontext(),
        stages.tracked_flow(flow_name, params, root, extra_tags, force) as run,
    ):
        data_dir = run.paths.resolve(data_dir)
        data = stages.validated(run, data_dir, params)
        if not data.report.success:
            return stages.failed(data.report.message(data_dir))
        version = data.lineage["data_version"]
        champion = registry.champion_version(model_name)
        trained_on = registry.version_tags(model_name, champion).get("data_version") if champion else None
        if only_if_new_data and trained_on == version:
            return skip(run, flow_name, version, drift.decide(champion, False, None, 0, False))
        split = stages.splits(run, data, data_dir, params)
        stages.log_datasets(run, data, split)
        measured, decision = None, None
        if only_if_new_data and champion is not None:
            measured = stages.run_stage(
                run,
                stages.measure_drift,
                stages.log_drift,
                data=split,
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
                return skip(run, flow_name, version, decision, measured)
            stages.publish_decision(run, decision)
        warm_start_from = model_name if warm_start else None
        start = stages.run_stage(
            run,
            stages.select_backbone,
            stages.log_selection,
            params=params.select,
            # runners-up only for the search: the fixed recipe never uses them, and each one
            # would be loaded, pickled into the stage's cached result and unpickled on reuse
            top_k=params.select.top_k if params.search.enabled else 1,
            data=split,
            image_size=params.data.image_size,
            seed=params.finetune.seed,
            warm_start_from=warm_start_from,
            warm_start_version=warm_start_version,
            registry_state=selection.registry_state(
                params.select.candidates, warm_start_from, warm_start_version
            ),
        )
        stages.name_run(run, flow_name, version[:8], selection.short_name(start.uri))
        result = stages.run_stage(
            run,
            stages.finetune_model,
            stages.log_training,
            start=start,
            data=split,
            params=params.finetune,
            search=params.search,
            augment=params.augment,
            reproducibility=params.reproducibility,
            root=run.paths.root,
        )
        start = stages.searched_backbone(run, start, result)
        evaluation = stages.run_stage(
            run,
            stages.evaluate_model,
            stages.log_evaluation,
            result=result,
            data=split,
            model_name=model_name,
            champion=champion,
        )
        registered = None
        if register:
            registered = stages.register_model(
                result,
                split,
                params.data.image_size,
                evaluation,
                stages.version_tags(run, data, params, start),
                params.register,
                run,
            )
        summary = RunSummary(
            flow=flow_name,
            mlflow_run_id=run.run_id,
            data_version=version,
            data_dvc_state=data.lineage["data_dvc_state"],
            images=split.sizes(),
            classes=split.class_names,
            stage_seconds=run.seconds,
            reused=run.reused,
            logme=start.scores,
            backbone=start.uri,
            test=evaluation.challenger.metrics,
            champion_before=evaluation.champion,
            registered=registered,
            drift=measured.report.summary() if measured else None,
            decision=decision.reason if decision else None,
            curves=result.history,
            strategy=result.search["explanation"] if result.search else None,
            **stages.test_details(evaluation.challenger),
        )
        return stages.publish(run, summary, data.report.docs_dir)


def skip(
    run: stages.FlowRun,
    flow_name: str,
    data_version: str,
    decision: drift.RetrainDecision,
    measured: drift.Measurement | None = None,
) -> RunSummary:
    """A retrain that trains nothing: the decision published, the run tagged."""
    stages.publish_decision(run, decision)
    mlflow.set_tag("outcome", "skipped")
    summary = RunSummary(
        flow_name,
        run.run_id,
        skipped=decision.reason,
        data_version=data_version,
        stage_seconds=run.seconds,
        reused=run.reused,
        drift=measured.report.summary() if measured else None,
    )
    return stages.publish(run, summary)
