"""Head trials through Keras Tuner's distributed mode (tasks/search/tuner_workers.py) on a real
Dask LocalCluster of 2 worker processes: two Keras Tuner workers against one chief run the grid
that one process runs, with the same results; a worker killed mid-search loses no trial."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from tasks.core import runner
from tasks.core.config import FinetuneParams, SearchParams
from tasks.search import heads, tuner_workers
from tasks.search.records import SearchBackbone

pytestmark = pytest.mark.slow
FINETUNE = FinetuneParams(batch_size=32, head_epochs=12, patience=12)
PARAMS = SearchParams(head_trials=4)  # 2 backbones x 4 rates: 8 grid trials


def features(n: int, seed: int, dim: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Features with a class signal (3 classes) on noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, dim)).astype("float32")
    x[np.arange(n), y] += 1.5
    return x, y


def backbones(n: int) -> tuple[list[SearchBackbone], tuple[np.ndarray, np.ndarray]]:
    (xa, y), (va, vy) = features(n, 0), features(n // 4, 1)
    xb, vb = xa[:, ::-1].copy(), va[:, ::-1].copy()  # a second backbone: the same signal, moved
    found = [SearchBackbone(name, None, None, x, v) for name, x, v in (("a", xa, va), ("b", xb, vb))]  # type: ignore[arg-type]
    return found, (y, vy)


def trials(tuner) -> dict[tuple, float]:
    """(backbone, learning rate) -> val score of every completed trial."""
    return {
        (t.hyperparameters.values["backbone"], round(t.hyperparameters.values["learning_rate"], 9)): t.score
        for t in tuner.oracle.trials.values()
        if t.status == "COMPLETED"
    }


def in_process(found, y, folder) -> dict[tuple, float]:
    """The same grid point -> score from the search's head trials in this process."""
    records = heads.head_trials(found, y, 3, PARAMS, FINETUNE, folder, resume=False)
    return {
        (r.hyperparameters["backbone"], round(r.hyperparameters["learning_rate"], 9)): r.score
        for r, _ in records
        if r.trial_id.startswith("head-")
    }


def test_two_keras_tuner_workers_against_one_chief_run_the_grid_one_process_runs(tmp_path, dask, monkeypatch):
    found, y = backbones(600)
    alone = in_process(found, y, tmp_path / "alone")
    assert len(alone) == 8
    monkeypatch.setattr(runner, "_active", dask)
    chief = tuner_workers.search(
        heads._Heads(found, y, 3, PARAMS, FINETUNE),
        found,
        y,
        3,
        PARAMS,
        FINETUNE,
        tmp_path / "chief",
        False,
        tune_here=False,
    )
    shared = trials(chief)
    assert shared.keys() == alone.keys()  # every grid point, once
    for point, score in shared.items():  # the same training (1 thread against 2: float rounding)
        assert abs(score - alone[point]) <= 1 / len(y[1]), point
    # each Keras Tuner worker saves its state (`<tuner id>.json`) after each trial it ran
    ran = sorted(p.stem for p in (tmp_path / "chief" / "heads").glob("*.json") if p.stem != "oracle")
    assert ran == ["worker-0", "worker-1"]  # both workers ran trials, nothing ran here
    assert (tmp_path / "chief" / "heads" / tuner_workers.DONE).exists()


def test_workers_killed_mid_trial_lose_no_trial(tmp_path, dask, monkeypatch):
    """SIGKILL to every busy Dask worker while one of them is in a trial: Dask runs their tasks
    again once the nanny has restarted them, the chief hands each its unfinished trial back, and
    the grid ends as it ends in one process, every finished trial kept."""
    found, y = backbones(3000)
    alone = in_process(found, y, tmp_path / "alone")
    monkeypatch.setattr(runner, "_active", dask)
    client, folder = dask.client(), tmp_path / "chief"
    killed: list[int] = []
    finished_before: dict[str, float] = {}

    def kill_mid_trial() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            try:  # the chief saves its state at every trial's start and end
                state = json.loads((folder / "heads" / "oracle.json").read_text())
            except (OSError, ValueError):
                state = {}
            if any(tuner.startswith("worker-") for tuner in state.get("ongoing_trials", {})):
                finished_before.update(
                    {
                        p.parent.name: json.loads(p.read_text())["score"]
                        for p in (folder / "heads").glob("trial_*/trial.json")
                        if json.loads(p.read_text())["status"] == "COMPLETED"
                    }
                )
                busy = [address for address, keys in client.processing().items() if keys]
                for pid in client.run(os.getpid, workers=busy).values():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_mid_trial, daemon=True)
    killer.start()
    chief = tuner_workers.search(
        heads._Heads(found, y, 3, PARAMS, FINETUNE),
        found,
        y,
        3,
        PARAMS,
        FINETUNE,
        folder,
        False,
        tune_here=False,
    )
    killer.join(timeout=5)
    assert killed, "the search ended before a worker could be killed mid-trial"
    done = trials(chief)
    assert done.keys() == alone.keys()  # every grid point, once
    for point, score in done.items():  # the rerun trials train as they would have
        assert abs(score - alone[point]) <= 1 / len(y[1]), point
    for trial_id, score in finished_before.items():  # nothing finished before the kill was lost
        assert chief.oracle.trials[trial_id.removeprefix("trial_")].score == score
    for trial in chief.oracle.trials.values():  # each with its curve on disk
        assert chief.record(trial).history["val_accuracy"]
