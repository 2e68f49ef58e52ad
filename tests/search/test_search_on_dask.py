"""The strategy search on a Dask runner (a real local cluster of 2 worker processes): the
scratch baseline trains on a worker while the flow's process runs the other trials (the head
trials with the workers: tests/search/test_tuner_workers.py), gives what it gives in process,
and a worker killed in the middle of it costs a rerun, not the search."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from distributed import get_task_stream
from test_strategy import candidate, images, pretrained_backbone

from tasks.core import runner
from tasks.core.config import FinetuneParams, SearchParams
from tasks.modality.pixels import Augment
from tasks.search import strategy

pytestmark = pytest.mark.slow
FINETUNE = FinetuneParams(batch_size=16, head_epochs=5)


def transitions(client, since: float) -> list[tuple[str, str]]:
    """(task name, state it went to) of the transitions the scheduler logged since `since`
    (`time.time()`; its log keeps the last 1,000)."""

    def log(dask_scheduler) -> list[tuple[str, str]]:
        return [
            (str(t.key).split("-")[0], t.finish)
            for t in dask_scheduler.transition_log
            if t.timestamp >= since
        ]

    return client.run_on_scheduler(log)


def search(backbone, train, val, params, folder):
    return strategy.search(
        [candidate("pretrained", backbone, train, val)],
        train,
        val,
        3,
        params,
        FINETUNE,
        Augment(),
        checkpoints=folder,
    )


def test_scratch_trains_on_a_worker_and_gives_what_it_gives_in_process(tmp_path, on_disk, dask, monkeypatch):
    backbone = pretrained_backbone()
    train, val = on_disk(*images(90, seed=1)), on_disk(*images(30, seed=2))
    params = SearchParams(strategies=["head", "scratch"], head_trials=2, scratch_epochs=4, scratch_patience=4)
    here = search(backbone, train, val, params, tmp_path / "here")
    monkeypatch.setattr(runner, "_active", dask)
    with get_task_stream(dask.client()) as stream:
        there = search(backbone, train, val, params, tmp_path / "there")
    ran = [task["key"].split("-")[0] for task in stream.data]
    assert ran.count("run_scratch") == 1  # the scratch baseline, on a worker (beside head trials: `tune`)
    by_id = {t.trial_id: t for t in here.trials}
    for trial in there.trials:  # the same trials; scratch to float rounding (1 thread against 2)
        assert trial.epochs == by_id[trial.trial_id].epochs
        assert abs(trial.score - by_id[trial.trial_id].score) <= 1 / len(val)
    scratched = next(t for t in there.trials if t.trial_id == "scratch")
    assert len(scratched.history["val_accuracy"]) == scratched.epochs == 4


def test_every_trial_runs_on_the_workers_and_gives_what_it_gives_in_process(
    tmp_path, on_disk, dask, monkeypatch
):
    """Head trials (Keras Tuner workers), the fine-tune bracket and scratch all on the cluster:
    the flow's process only coordinates; the same trials and epochs as in process."""
    backbone = pretrained_backbone()
    train, val = on_disk(*images(45, seed=1)), on_disk(*images(15, seed=2))
    params = SearchParams(
        strategies=["head", "top", "full", "scratch"],
        head_trials=2,
        unfreeze_layers=[2],
        max_epochs=3,
        budget_epochs=4,
        scratch_epochs=3,
        scratch_patience=3,
    )
    here = search(backbone, train, val, params, tmp_path / "here")
    monkeypatch.setattr(runner, "_active", dask)
    start = time.time()
    with get_task_stream(dask.client()) as stream:
        there = search(backbone, train, val, params, tmp_path / "there")
    ran = sorted(task["key"].split("-")[0] for task in stream.data)
    assert ran.count("run_rungs") == ran.count("run_scratch") == 1
    # the head trials' tasks ran on the workers (the chief may cancel one still winding down
    # once the grid is done: the stream of finished tasks can lack it, the scheduler's log not)
    assert ("tune", "processing") in transitions(dask.client(), start), ran
    by_id = {t.trial_id: t for t in here.trials}
    assert sorted(by_id) == sorted(t.trial_id for t in there.trials)
    for trial in there.trials:  # 1 thread against 2: float rounding
        assert trial.epochs == by_id[trial.trial_id].epochs, trial.trial_id
        assert abs(trial.score - by_id[trial.trial_id].score) <= 1 / len(val), trial.trial_id
    assert there.best.trial_id == here.best.trial_id


def test_a_worker_killed_mid_scratch_costs_a_rerun_not_the_search(tmp_path, on_disk, dask, monkeypatch):
    """SIGKILL to the worker training scratch once it has backed up an epoch: Dask runs the task
    again on the other worker, which resumes from the backup; every trial is recorded."""
    backbone = pretrained_backbone()
    train, val = on_disk(*images(90, seed=1)), on_disk(*images(30, seed=2))
    params = SearchParams(
        strategies=["head", "scratch"],
        head_trials=2,
        scratch_epochs=40,
        scratch_patience=40,
        scratch_patience_steps=None,
    )
    monkeypatch.setattr(runner, "_active", dask)
    client, folder = dask.client(), tmp_path / "checkpoints"
    killed: list[int] = []

    def kill_once_backed_up() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            backup = folder / "search" / "scratch"
            busy = [address for address, keys in client.processing().items() if keys]
            if busy and (backup / "training_metadata.json").is_file():  # an epoch backed up
                pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_once_backed_up, daemon=True)
    killer.start()
    found = search(backbone, train, val, params, folder)
    killer.join(timeout=5)
    assert killed, "the scratch task finished before it could be killed"
    assert sum(t.trial_id.startswith("head-") for t in found.trials) == 2  # this process's trials
    scratched = next(t for t in found.trials if t.trial_id == "scratch")
    # resumed after its last backed-up epoch: the rerun's curve is the epochs after it
    assert 1 <= scratched.epochs == len(scratched.history["val_accuracy"]) < 40
