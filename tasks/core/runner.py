"""Where fan-out work runs: in the flow's process (`runner.kind: local`, the default) or on a
Dask cluster (`dask`): an existing scheduler by `runner.address`, or a `LocalCluster` of
`runner.workers` processes started on first use and closed with the flow.

What fans out is work whose result is small: each candidate backbone's frozen features (written
to the feature cache under the project root) and its LogME score. Results travel back as values
and file references, never as arrays, so every worker must see the project root at the same
path; that is checked before the first task, and a worker that cannot see it stops the run with
one line that says so. A worker that dies mid-task loses nothing: Dask runs its task again on
another worker (up to 3 times).

The flow's stages themselves stay in its process: they hand Keras models to each other, which
would otherwise be pickled through the cluster at every stage boundary.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from tasks.core.config import RunnerParams
from tasks.core.errors import UserError

T = TypeVar("T")
R = TypeVar("R")
CONNECT_TIMEOUT = "20s"  # a scheduler that does not answer in this long is not there
POLL_SECONDS = 5.0  # how often a waiting `map` looks at the cluster
NO_WORKER_SECONDS = 120.0  # a cluster without any worker for this long ends the run


class RunnerError(UserError):
    """The cluster cannot be reached or cannot see the shared folder."""


class Pending:
    """Work handed to a runner with `submit`: `result()` waits for it (in the flow's process:
    runs it then, so the flow's order of work is what it was without a runner). On a cluster,
    `failed()` says whether it has failed for good (its error, in words) and `cancel()` drops it
    (a task that has started runs to its end on its worker; its result is dropped)."""

    def __init__(self, fn: Callable[[], Any], future: Any = None) -> None:
        self._fn, self._future = fn, future

    def result(self) -> Any:
        return self._fn()

    def then(self, fn: Callable[[Any], Any]) -> Pending:
        """The same work, its result passed through `fn` when asked for."""
        return Pending(lambda: fn(self.result()), self._future)

    def finished(self) -> bool:
        """Whether it has ended, one way or another (in the flow's process: not started yet)."""
        return self._future is not None and self._future.done()

    def failed(self) -> str | None:
        if self._future is None or self._future.status != "error":
            return None
        return f"{type(self._future.exception()).__name__}: {self._future.exception()}"

    def cancel(self) -> None:
        if self._future is not None:
            self._future.cancel()


class Runner:
    """In the flow's process: `map` is a plain loop."""

    in_process = True

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        return [fn(item) for item in items]

    def submit(self, fn: Callable[[T], R], item: T) -> Pending:
        """`fn(item)` to run while the flow goes on; `.result()` is its value."""
        return Pending(lambda: fn(item))

    def worker_count(self) -> int:
        """The processes that take submitted work (none but this one here)."""
        return 0

    def close(self) -> None:
        pass


_threads: int | None = None  # a Dask worker's thread count, once it ran a task


def threads() -> int:
    """The cores this process may use: every one, or a Dask worker's `--nthreads` (two workers
    of one thread each on 2 cores must not each decode and compute on both)."""
    return _threads or os.cpu_count() or 1


def _on_worker(setup: Callable[[], None] | None, fn: Callable[[T], R], item: T) -> R:
    global _threads
    if _threads is None:
        from distributed import get_worker

        _threads = get_worker().state.nthreads
        import tensorflow as tf

        try:  # before TensorFlow's first op in this process; after it, already set
            tf.config.threading.set_intra_op_parallelism_threads(_threads)
            tf.config.threading.set_inter_op_parallelism_threads(_threads)
        except RuntimeError:
            pass
    if setup is not None:
        setup()
    return fn(item)


def _key(fn: Callable[..., Any]) -> str:
    """A task's name on the cluster (its dashboard, task stream): the function it runs, unique."""
    return f"{getattr(fn, '__name__', 'task')}-{uuid.uuid4().hex}"


def _sees(token: str) -> bool:
    return Path(token).is_file()


class DaskRunner(Runner):
    """On a Dask cluster; connects (or starts a local one) on the first `map`. `setup` runs on
    the worker before each task (a process that joined late gets it too): the flow's MLflow
    store and determinism."""

    in_process = False

    def __init__(
        self,
        address: str | None,
        workers: int,
        threads_per_worker: int,
        shared: Path,
        setup: Callable[[], None] | None = None,
    ) -> None:
        self.address = address
        self.workers = workers
        self.threads = threads_per_worker
        self.shared = shared
        self.setup = setup
        self._client: Any = None
        self._cluster: Any = None

    def client(self) -> Any:
        """The connected `distributed.Client` (checked to see the shared folder)."""
        if self._client is None:
            from distributed import Client, LocalCluster

            logging.getLogger("distributed").setLevel(logging.WARNING)  # not its every step
            if self.address:
                try:
                    self._client = Client(self.address, timeout=CONNECT_TIMEOUT)
                except OSError as e:
                    raise RunnerError(
                        f"runner: no Dask scheduler answers at {self.address} ({e}); start one "
                        "(`dask scheduler`, then `dask worker ADDRESS`) or set runner.kind: local"
                    ) from None
            else:
                threads = str(self.threads)
                self._cluster = LocalCluster(
                    n_workers=self.workers,
                    threads_per_worker=self.threads,
                    processes=True,
                    dashboard_address=":0",  # any free port: two runs at once never clash
                    # each worker's BLAS keeps to the worker's threads (TensorFlow: `_on_worker`)
                    env={"OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads},
                )
                self._client = Client(self._cluster)
            self._check_shared()
        return self._client

    def _check_shared(self) -> None:
        """Every worker sees `shared`: a token file written here is found there."""
        folder = self.shared / ".transferops" / "runner"
        folder.mkdir(parents=True, exist_ok=True)
        token = folder / uuid.uuid4().hex
        token.touch()
        try:
            seen = self._client.run(_sees, str(token))
        finally:
            token.unlink()
        blind = sorted(worker for worker, ok in seen.items() if not ok)
        if not seen:
            raise RunnerError(f"runner: the Dask scheduler at {self.address} has no workers; start some")
        if blind:
            raise RunnerError(
                f"runner: Dask worker {blind[0]} cannot see {self.shared} (the project folder): "
                "every worker needs it at the same path (a shared mount), or set runner.kind: local"
            )

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        client = self.client()
        return self._gather(
            client, [client.submit(_on_worker, self.setup, fn, item, key=_key(fn)) for item in items]
        )

    def _gather(self, client: Any, futures: list[Any]) -> list[Any]:
        from distributed import KilledWorker

        self._watch(client, futures)
        try:
            return client.gather(futures)
        except KilledWorker as e:
            raise RunnerError(
                f"runner: a task killed every Dask worker that ran it ({e}); it needs more memory "
                "than a worker has or crashes it: give workers more memory or set runner.kind: local"
            ) from None

    def submit(self, fn: Callable[[T], R], item: T) -> Pending:
        """Starts `fn(item)` on a worker now; the flow goes on until it asks for the result."""
        client = self.client()
        future = client.submit(_on_worker, self.setup, fn, item, key=_key(fn))
        return Pending(lambda: self._gather(client, [future])[0], future)

    def worker_count(self) -> int:
        return len(self.client().scheduler_info(n_workers=-1)["workers"])

    def _watch(self, client: Any, futures: list[Any]) -> None:
        """Wait for `futures` without hanging: a cluster left without any worker (all died, or
        none ever started) for `NO_WORKER_SECONDS` ends the wait with one line."""
        from distributed import wait

        alone_since: float | None = None  # when the cluster was last seen without a worker
        while True:
            try:
                wait(futures, timeout=POLL_SECONDS)
                return
            except TimeoutError:
                if any(f.status == "error" for f in futures):
                    return  # gather raises it
            if client.scheduler_info(n_workers=-1)["workers"]:
                alone_since = None
            elif alone_since is None:
                alone_since = time.monotonic()
            elif time.monotonic() - alone_since > NO_WORKER_SECONDS:
                where = self.address or "the local Dask cluster"
                raise RunnerError(
                    f"runner: {where} has had no worker for {NO_WORKER_SECONDS:.0f} s with "
                    f"{sum(not f.done() for f in futures)} task(s) waiting (the workers died or never "
                    "started: see their logs); start workers or set runner.kind: local"
                )

    def close(self) -> None:
        with suppress(Exception):  # closing a cluster that lost its workers may raise
            if self._client is not None:
                self._client.close()
            if self._cluster is not None:
                self._cluster.close()
        self._client = self._cluster = None


_active: Runner = Runner()


def current() -> Runner:
    """The runner of the flow in progress (in-process outside a flow)."""
    return _active


@contextmanager
def using(runner: Runner) -> Iterator[Runner]:
    """Make `runner` current for the duration; closed at the end."""
    global _active
    before, _active = _active, runner
    try:
        yield runner
    finally:
        _active = before
        runner.close()


def from_params(params: RunnerParams, shared: Path, setup: Callable[[], None]) -> Runner:
    """The runner that `runner:` in params names; `shared`: the project folder every worker must see."""
    if params.kind == "local":
        return Runner()
    return DaskRunner(params.address, params.workers, params.threads_per_worker, shared, setup)
