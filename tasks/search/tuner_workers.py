"""Head trials on several processes through Keras Tuner's own distributed mode (on a Dask
runner, tasks.core.runner): a chief oracle served over gRPC from the flow's process (Keras
Tuner's `OracleServicer`), a tuner on each Dask worker, each asking the chief for the next grid
point (`KERASTUNER_TUNER_ID`, `KERASTUNER_ORACLE_IP`, `KERASTUNER_ORACLE_PORT`) until the grid is
done. On a cluster every trial runs on the workers: the flow's process serves the chief and
tunes itself only when no worker task is left (or when asked to, `tune_here`).

What a worker needs travels as file references: the cached features (the project folder every
worker sees), the trial folders where each trial's checkpoint and curve go; the labels and
params are small. Nothing is lost to a dying worker:

- killed mid-trial, Dask runs its task again under the same tuner id, and the chief hands the
  same trial back to it (Keras Tuner keeps each tuner id's ongoing trial), so the trial reruns;
- failed for good (its task errors, or the cluster has had no worker for
  `runner.NO_WORKER_SECONDS`), the chief ends its trial as INVALID, which puts it back in the
  queue: another worker's tuner (or the flow's) runs it;
- the chief never waits on a lost worker (keras-tuner#915: a worker's gRPC error stalls the
  chief): it serves until every grid point has ended, and tunes here when no worker task is
  left. Tasks still queued are then cancelled; a worker that asks after the chief has gone finds
  the `DONE` mark and returns (or gives up after `CLIENT_TIMEOUT` seconds, not Keras Tuner's hour).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import keras
import numpy as np

from tasks.core import progress, runner
from tasks.core.config import FinetuneParams, SearchParams
from tasks.core.errors import UserError
from tasks.search.heads import _Heads, early_stopping, head_tuner
from tasks.search.records import SearchBackbone

DONE = "search-done"  # in the tuner's project folder once the chief has stopped
CLIENT_TIMEOUT = 120  # seconds a worker's call waits for the chief
IDLE_PAUSE = 0.5  # seconds a tuner waits when the chief says "wait for the ongoing trials"


@dataclass
class HeadsJob:
    """One worker's part: the features as files, never arrays."""

    features: list[tuple[str, str, str, list[np.ndarray] | None]]  # name, train .npy, val .npy, init head
    y: tuple[np.ndarray, np.ndarray]
    num_classes: int
    params: SearchParams
    finetune: FinetuneParams
    folder: str  # the search's checkpoints folder (shared)
    chief: str  # host:port of the oracle
    tuner_id: str


@contextmanager
def _as_tuner(tuner_id: str, chief: str) -> Iterator[None]:
    """This process as the Keras Tuner worker `tuner_id` of the chief at `chief` for a while."""
    host, port = chief.rsplit(":", 1)
    names = {"KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": host, "KERASTUNER_ORACLE_PORT": port}
    before = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _pause_when_idle(tuner: Any, on_idle: Callable[[], None] | None = None) -> None:
    """Keras Tuner asks again at once when told to wait (a busy loop over gRPC): wait a little."""
    from keras_tuner.src.engine.trial import TrialStatus

    ask = tuner.oracle.create_trial

    def create_trial(tuner_id: str) -> Any:
        trial = ask(tuner_id)
        if trial.status == TrialStatus.IDLE:
            if on_idle is not None:
                on_idle()
            time.sleep(IDLE_PAUSE)
        return trial

    tuner.oracle.create_trial = create_trial


def tune(job: HeadsJob) -> int:
    """A Dask worker's task: trials from the chief until the grid is done; how many it ran."""
    import grpc
    from keras_tuner.src.distribute import oracle_client

    folder = Path(job.folder)
    if (folder / "heads" / DONE).exists():
        return 0  # queued until the search was over
    oracle_client.TIMEOUT = CLIENT_TIMEOUT
    backbones = [
        SearchBackbone(name, None, None, np.load(train, mmap_mode="r"), np.load(val, mmap_mode="r"), head)  # type: ignore[arg-type]
        for name, train, val, head in job.features
    ]
    heads = _Heads(backbones, job.y, job.num_classes, job.params, job.finetune)
    with _as_tuner(job.tuner_id, job.chief):
        tuner = head_tuner(heads, job.finetune, folder, overwrite=False)
        tuner.speak = False  # the chief says each trial in the flow's output
        _pause_when_idle(tuner)
        keras.utils.set_random_seed(job.finetune.seed)
        try:
            tuner.search(callbacks=early_stopping(job.finetune), verbose=0)
        except grpc.RpcError as e:
            if (folder / "heads" / DONE).exists():
                return tuner.ran
            raise UserError(
                f"search: head-trial worker {job.tuner_id} lost the chief at {job.chief} "
                f"({e.code().name}); is the flow's process reachable from the workers?"
            ) from None
    return int(tuner.ran)


def _on_disk(array: np.ndarray, path: Path) -> str:
    """The .npy file behind cached features (written to `path` when they are in memory)."""
    filename = getattr(array, "filename", None)
    if isinstance(array, np.memmap) and filename and array.offset == 128 and Path(filename).is_file():
        return str(filename)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(array))
    return str(path)


def _host(on: runner.Runner) -> str:
    """The address of this machine that the workers reach: 127.0.0.1 for a local cluster, else
    the one this machine uses toward the scheduler."""
    address = getattr(on, "address", None)
    if not address:
        return "127.0.0.1"
    where = urlsplit(address if "://" in address else f"tcp://{address}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((where.hostname or "127.0.0.1", where.port or 8786))
        return str(probe.getsockname()[0])


def _serve(oracle: Any, host: str) -> tuple[Any, str]:
    """Keras Tuner's oracle service for `oracle` on a free port of `host`: (server, host:port)."""
    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    protos.get_service_grpc().add_OracleServicer_to_server(OracleServicer(oracle), server)
    port = server.add_insecure_port(f"{host}:0")
    server.start()
    return server, f"{host}:{port}"


class _Chief:
    """What the flow's process watches while its tuner waits: workers lost for good (their
    trials go back to the queue) and trials finished anywhere (said once each)."""

    def __init__(self, tuner: Any, pending: dict[str, runner.Pending], on: runner.Runner) -> None:
        self.tuner, self.pending, self.on = tuner, pending, on
        self.said: set[str] = set()
        self.alone_since: float | None = None

    def requeue(self, tuner_id: str, why: str) -> None:
        oracle = self.tuner.oracle
        trial = oracle.ongoing_trials.get(tuner_id)
        if trial is not None:
            trial.status, trial.message = "INVALID", why
            oracle.end_trial(trial)  # back in the queue (max_retries_per_trial), for another tuner
            progress.say(f"search: trial {trial.trial_id} of {tuner_id} is run again elsewhere ({why})")

    def watch(self) -> None:
        for tuner_id, pending in list(self.pending.items()):
            failed = pending.failed()
            if failed:
                del self.pending[tuner_id]
                self.requeue(tuner_id, failed)
        if self.on.worker_count():
            self.alone_since = None
        elif self.alone_since is None:
            self.alone_since = time.monotonic()
        elif time.monotonic() - self.alone_since > runner.NO_WORKER_SECONDS:
            for tuner_id in list(self.pending):
                self.requeue(tuner_id, "the cluster has no worker")
        self.say_finished()

    def say_finished(self) -> None:
        from tasks.search.records import say

        for trial in list(self.tuner.oracle.trials.values()):
            if trial.status == "COMPLETED" and trial.trial_id not in self.said:
                self.said.add(trial.trial_id)
                say(self.tuner.record(trial))


def search(
    heads: Any,
    backbones: list[SearchBackbone],
    y: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    params: SearchParams,
    finetune: FinetuneParams,
    folder: Path,
    resume: bool,
    tune_here: bool = False,
) -> Any:
    """The head-trial grid on the current (Dask) runner's workers and, with `tune_here`, in this
    process: the chief's tuner, every trial in its oracle."""
    on = runner.current()
    chief = head_tuner(heads, finetune, folder, overwrite=not resume, max_retries_per_trial=1)
    chief.oracle.verbose = 0  # its trials are said as `search trial ...` lines
    done = folder / "heads" / DONE
    done.unlink(missing_ok=True)
    server, address = _serve(chief.oracle, _host(on))
    features = [
        (
            b.name,
            _on_disk(b.train_features, folder / "features" / f"{b.name}-train.npy"),
            _on_disk(b.val_features, folder / "features" / f"{b.name}-val.npy"),
            b.init_head,
        )
        for b in backbones
    ]
    workers = on.worker_count()
    here = " and in this process" if tune_here else ""
    progress.say(f"search: head trials on {workers} Dask workers{here} (Keras Tuner chief at {address})")
    pending = {
        f"worker-{i}": on.submit(
            tune, HeadsJob(features, y, num_classes, params, finetune, str(folder), address, f"worker-{i}")
        )
        for i in range(workers)
    }
    watcher = _Chief(chief, dict(pending), on)
    try:
        while not tune_here and not _grid_done(chief.oracle):
            watcher.watch()
            if all(task.finished() for task in pending.values()):  # no worker left to ask
                progress.say("search: every head-trial worker has ended; the rest run in this process")
                tune_here = True
            time.sleep(IDLE_PAUSE)
        if tune_here:
            with _as_tuner("flow", address):
                mine = head_tuner(heads, finetune, folder, overwrite=False)
                mine.speak = False
                _pause_when_idle(mine, watcher.watch)
                keras.utils.set_random_seed(finetune.seed)
                mine.search(callbacks=early_stopping(finetune), verbose=0)
        watcher.say_finished()
    finally:
        done.touch()
        for task in pending.values():
            task.cancel()
        server.stop(grace=2).wait()
    return chief


def _grid_done(oracle: Any) -> bool:
    """Whether every grid point has a trial and none is running or waiting to run again."""
    if oracle.ongoing_trials or oracle._retry_queue:
        return False
    ended = [t for t in oracle.trials.values() if t.status in ("COMPLETED", "FAILED")]
    return len(ended) >= _grid_size(oracle)


def _grid_size(oracle: Any) -> int:
    size = 1
    for hp in oracle.hyperparameters.space:
        size *= len(getattr(hp, "values", [hp]))
    return size
