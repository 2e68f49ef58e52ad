"""The train flow: validate -> split -> select -> finetune -> evaluate -> register (+ promote).

`train_run` is everything after the split; the retrain flow (flows/retrain.py) calls it once it
has decided that there is something to train on.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import mlflow
from prefect import flow
from prefect.states import State

from flows import errors
from flows.stages import evaluate, finetune, flowrun, select, split, validate
from flows.stages.register import register_model
from tasks.core import runlock
from tasks.core.config import Params
from tasks.data.datasets import SplitData
from tasks.data.validate import ValidatedData
from tasks.promotion import drift, promote
from tasks.registry import versions
from tasks.reporting.summary import RunSummary
from tasks.selection import candidates, families


@flow(name="train", validate_parameters=False)
def train_flow(
    data_dir: Path,
    params: Params,
    root: Path,
    warm_start: bool = False,
    warm_start_version: str | None = None,
    register: bool = True,
    flow_name: str = "train",
    extra_tags: dict[str, str] | None = None,
    force: bool = False,
) -> RunSummary | State:
    """Fine-tune a pretrained backbone on `data_dir` and register the result. `warm_start`
    starts from the champion (or from `warm_start_version`) when it knows the same classes;
    `register=False` stops after evaluation (a reproduction registers nothing). A stage whose
    inputs are unchanged since an earlier run is reused (`flows.stages.caching`); `force`
    recomputes."""
    model_name = params.register.model_name
    with (
        runlock.exclusive(root, model_name) if register else nullcontext(),
        flowrun.tracked_flow(flow_name, params, root, extra_tags, force) as run,
    ):
        data_dir = run.paths.resolve(data_dir)
        data = validate.validated(run, data_dir, params)
        if not data.report.success:
            return flowrun.failed(data.report.message(data_dir))
        splits = split.splits(run, data, data_dir, params)
        split.log_datasets(run, data, splits)
        return train_run(
            run,
            data,
            splits,
            params,
            versions.champion_version(model_name),
            warm_start_from=model_name if warm_start else None,
            warm_start_version=warm_start_version,
            register=register,
        )


def train_run(
    run: flowrun.FlowRun,
    data: ValidatedData,
    splits: SplitData,
    params: Params,
    champion: str | None,
    warm_start_from: str | None = None,
    warm_start_version: str | None = None,
    register: bool = True,
    retrain: tuple[drift.Measurement | None, drift.RetrainDecision] | None = None,
) -> RunSummary:
    """select -> finetune -> evaluate -> register on validated, split data, in the flow's run;
    `retrain` (the drift measured and the decision to train) goes into the summary."""
    version = data.lineage["data_version"]
    offered = params.section(data.modality.name).candidates
    mlflow.set_tag("modality", data.modality.name)  # the runs table: which runs compare
    transfer = finetune.transfer_folder(run.paths, params.finetune)  # checked before any training
    start = flowrun.run_stage(
        run,
        select.select_backbone,
        select.log_selection,
        params=params.select,
        # runners-up only for the search: the fixed recipe never uses them, and each one
        # would be loaded, pickled into the stage's cached result and unpickled on reuse
        top_k=params.select.top_k if params.search.enabled else 1,
        data=splits,
        seed=params.finetune.seed,
        warm_start_from=warm_start_from,
        warm_start_version=warm_start_version,
        registry_state=candidates.registry_state(offered, warm_start_from, warm_start_version),
        modality=data.modality,
        offered=offered,
        root=run.paths.root,
        # the search: a warm start from the champion competes with fresh starts (the fixed
        # recipe trains the champion on)
        compete=params.search.enabled,
    )
    flowrun.name_run(run, run.flow, version[:8], families.short_name(start.uri))
    result = flowrun.run_stage(
        run,
        finetune.finetune_model,
        finetune.log_training,
        start=start,
        data=splits,
        params=params.finetune,
        search=params.search_for(data.modality.name),
        augment=data.modality.augment,
        reproducibility=params.reproducibility,
        root=run.paths.root,
        modality=data.modality,
        unlabelled=transfer,
    )
    start = select.searched_backbone(run, start, result)
    # an unchanged rerun: the champion is this very training, so its test scores are ours
    own = (
        champion is not None
        and versions.version_tags(params.register.model_name, champion).get(versions.TRAINING_KEY)
        == result.fingerprint
    )
    evaluation = flowrun.run_stage(
        run,
        evaluate.evaluate_model,
        evaluate.log_evaluation,
        result=result,
        data=splits,
        encoding=start.encoding,
        model_name=params.register.model_name,
        champion=None if own else champion,
    )
    if own:
        evaluation = promote.as_own_champion(evaluation, champion)
    registered = None
    if register:
        errors.check_prefect_api()  # lost mid-run: stop before the registry changes
        registered = register_model(
            result,
            splits,
            start.encoding,
            evaluation,
            flowrun.version_tags(run, data, params, start, result.transfer_set),
            params.register,
            params.export,
            run,
        )
    measured, decision = retrain or (None, None)
    summary = RunSummary(
        flow=run.flow,
        mlflow_run_id=run.run_id,
        data_version=version,
        data_dvc_state=data.lineage["data_dvc_state"],
        examples=splits.sizes(),
        classes=splits.class_names,
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
        **evaluate.test_details(evaluation.challenger),
    )
    return flowrun.publish(run, summary, data.report.docs_dir)
