"""The Dask runner on a real local cluster: a worker killed mid-task loses nothing, and a
scheduler that is not there is one line, not a hang."""

from __future__ import annotations

import os
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
