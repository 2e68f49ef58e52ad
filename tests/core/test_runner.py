"""The Dask runner on a real local cluster: a worker killed mid-task loses nothing, and a
scheduler that is not there is one line, not a hang."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

from tasks.core import runner


def _die_once(marker: str) -> int:
    """The first call kills its worker process (as kill -9 would); the retry answers."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        os._exit(1)
    return os.getpid()


def _pid(_: int) -> int:
    return os.getpid()


def test_tasks_run_on_worker_processes_and_survive_a_killed_worker(tmp_path):
    dask = runner.DaskRunner(None, workers=2, threads_per_worker=1, shared=tmp_path)
    with runner.using(dask) as on:
        assert runner.current() is dask
        pids = set(on.map(_pid, range(8)))
        assert os.getpid() not in pids
        marker = tmp_path / "killed"
        survivor = on.map(_die_once, [str(marker)])[0]
        assert marker.exists() and survivor != int(marker.read_text())
    assert runner.current().in_process  # back in process once the flow is done
    assert not list((tmp_path / ".transferops" / "runner").iterdir())


def test_no_scheduler_at_the_address_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "CONNECT_TIMEOUT", "2s")
    address = f"tcp://127.0.0.1:{free_port()}"
    with (
        runner.using(runner.DaskRunner(address, 1, 1, tmp_path)) as on,
        pytest.raises(runner.RunnerError) as error,
    ):
        on.map(_pid, [0])
    assert str(error.value).startswith(f"runner: no Dask scheduler answers at {address}")
    assert "\n" not in str(error.value)


def _exit(_: int) -> int:
    os._exit(1)


def test_a_cluster_that_lost_every_worker_ends_the_wait_in_one_line(tmp_path, monkeypatch):
    """A scheduler and one worker without a nanny (as on a remote cluster whose workers died):
    the task kills the worker, nothing restarts it, and the flow stops instead of waiting."""
    from distributed import Client

    monkeypatch.setattr(runner, "POLL_SECONDS", 0.5)
    monkeypatch.setattr(runner, "NO_WORKER_SECONDS", 3.0)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    worker = [sys.executable, "-m", "distributed.cli.dask_worker", address, "--no-nanny", "--nthreads", "1"]
    here = os.pathsep.join(str(Path(__file__).parents[i]) for i in range(3))  # _exit, conftest, tasks
    quiet = {
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.DEVNULL,
        "env": {**os.environ, "PYTHONPATH": here},
    }
    started = [subprocess.Popen([*scheduler, "--host", "127.0.0.1", "--port", str(port)], **quiet)]
    try:
        started.append(subprocess.Popen(worker, **quiet))
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(1, timeout=120)
        with (
            runner.using(runner.DaskRunner(address, 1, 1, tmp_path)) as on,
            pytest.raises(runner.RunnerError) as error,
        ):
            on.map(_exit, [0])
        message = str(error.value)
        assert message.startswith(f"runner: {address} has had no worker for 3 s with 1 task(s) waiting")
        assert "\n" not in message
    finally:
        for process in started:
            process.kill()
            process.wait()
