"""A run killed with SIGKILL takes its temporary Prefect server with it and leaves nothing
RUNNING once the next run starts; a second run of the same model in the same project is
refused at once while the first holds the lock."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import mlflow
import psutil
import pytest
from conftest import (
    checkpointed_epochs,
    isolated_env,
    make_image_folder,
    sets,
    use_store,
    wait_for_checkpoint,
)
from mlflow import MlflowClient

from tasks.core import runlock
from tasks.models.checkpoints import resumed_epoch

pytestmark = pytest.mark.slow

FIXED = ["--set", "search.enabled=false"]  # the fixed recipe's checkpoints are the point here
# long enough that the kill at the 5th checkpointed epoch (polled every 0.2 s) lands mid-training
SLOW_FINETUNE = [*FIXED, "--set", "finetune.head_epochs=100", "--set", "finetune.patience=100"]
CANDIDATE = ["--set", "images.candidates=[{uri: 'keras:MobileNetV3Small', weights: none, size: 32}]"]


def cli(root, *args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "--root", str(root), *CANDIDATE, *args]


def running_finetune(db) -> list[str]:
    """Run ids of RUNNING finetune stages, read straight from the store (without MLflow, which
    would race the other process creating the tables)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            rows = con.execute(
                "SELECT runs.run_uuid FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid "
                "WHERE runs.status = 'RUNNING' AND tags.key = 'stage' AND tags.value = 'finetune'"
            ).fetchall()
    except sqlite3.Error:
        return []
    return [r[0] for r in rows]


def test_a_killed_run_is_closed_by_the_next_one_which_resumes(tmp_path):
    root = tmp_path / "project"
    make_image_folder(root / "data" / "raw", ["dog", "eel"], per_class=15)
    env = isolated_env(tmp_path)
    victim = subprocess.Popen(
        cli(root, "train", *SLOW_FINETUNE),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_checkpoint(victim, root, 5)
    children = psutil.Process(victim.pid).children()
    servers = [p for p in children if "prefect.server.api.server:create_app" in p.cmdline()]
    assert len(servers) == 1  # the run's temporary Prefect server
    victim.send_signal(signal.SIGKILL)  # the run alone: no atexit hook, no chance to stop its server
    victim.wait(timeout=30)
    _, alive = psutil.wait_procs(servers, timeout=120)
    assert alive == [], "the temporary Prefect server outlived the run that started it"

    with runlock.exclusive(root, "transferops-classifier"):  # the kernel released the dead run's lock
        pass
    finetune_run = running_finetune(root / "mlflow" / "mlflow.db")[0]
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    mlflow.set_registry_uri(mlflow.get_tracking_uri())
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name("transferops").experiment_id
    assert len(client.search_runs([experiment_id], "attributes.status = 'RUNNING'")) == 2  # flow + finetune

    resumable = checkpointed_epochs(root)
    done = subprocess.run(
        cli(root, "train", *SLOW_FINETUNE),  # the same run again: it resumes from the checkpoint
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert client.search_runs([experiment_id], "attributes.status = 'RUNNING'") == []
    killed = client.search_runs([experiment_id], "attributes.status = 'KILLED'")
    assert {r.data.tags.get("stage") or r.data.tags["flow"] for r in killed} == {"train", "finetune"}
    assert f"closed MLflow run {finetune_run} (finetune) left RUNNING by process" in done.stderr
    assert "marked Prefect flow run" in done.stderr and "crashed" in done.stderr
    assert len(client.search_model_versions("name='transferops-classifier'")) == 1
    rerun = client.search_runs([experiment_id], "tags.stage = 'finetune' and attributes.status = 'FINISHED'")[
        0
    ]
    assert json.loads(rerun.data.tags["resumed_from_epoch"]) == {"head": resumable}
    head_epochs = rerun.data.metrics["epochs.head"]
    assert head_epochs == 100 - resumable  # only the epochs the killed run had not finished
    assert f"head: resumed from the checkpoint after epoch {resumable}" in done.stderr
    assert not list((root / ".transferops" / "checkpoints").glob("finetune-*"))


def test_a_second_run_in_the_same_project_is_refused(tmp_path):
    make_image_folder(tmp_path / "data" / "raw", ["dog", "eel"], per_class=6)
    env = isolated_env(tmp_path)
    with runlock.exclusive(tmp_path, "transferops-classifier"):  # held by this (test) process
        done = subprocess.run(cli(tmp_path, "train"), env=env, capture_output=True, text=True, timeout=600)
    last = [line for line in done.stderr.splitlines() if line.startswith("transferops:")][-1]
    held_by = f"in {tmp_path} (pid {os.getpid()} since "
    assert last.startswith("transferops: another run of transferops-classifier is in progress"), last
    assert held_by in last and done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "temporary server" not in done.stderr  # refused before anything slow started


def test_a_run_that_loses_its_prefect_server_stops_before_registering(tmp_path):
    root = tmp_path / "project"
    make_image_folder(root / "data" / "raw", ["dog", "eel"], per_class=15)
    env = isolated_env(tmp_path)
    epochs = [*FIXED, "--set", "finetune.head_epochs=30", "--set", "finetune.patience=30"]
    run = subprocess.Popen(
        cli(root, "train", *epochs), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for_checkpoint(run, root, 2)
    servers = [
        p for p in psutil.Process(run.pid).children() if "prefect.server.api.server:create_app" in p.cmdline()
    ]
    assert len(servers) == 1
    servers[0].kill()  # the outage: training goes on, registration must not
    _, stderr = run.communicate(timeout=600)
    last = stderr.strip().splitlines()[-1]
    assert run.returncode == 1, stderr[-3000:]
    assert last.startswith("transferops: the Prefect API at http://127.0.0.1:"), last
    assert "nothing was registered" in last and "Traceback" not in stderr
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    mlflow.set_registry_uri(mlflow.get_tracking_uri())
    client = MlflowClient()
    assert client.search_model_versions("name = 'transferops-classifier'") == []
    experiment_id = client.get_experiment_by_name("transferops").experiment_id
    assert client.search_runs([experiment_id], "attributes.status = 'RUNNING'") == []


def search_state(root) -> tuple[int, int]:
    """(finished head trials, scratch epochs checkpointed) of the search a run has going."""
    state = root / ".transferops" / "checkpoints"
    heads = sum(
        '"COMPLETED"' in path.read_text(errors="replace")
        for path in state.glob("finetune-*/search/heads/trial_*/trial.json")
    )
    epochs = [resumed_epoch(folder) or 0 for folder in state.glob("finetune-*/search/scratch")]
    return heads, max(epochs, default=0)


def test_a_search_killed_mid_way_resumes_and_says_what_it_kept(tmp_path):
    root = tmp_path / "project"
    make_image_folder(root / "data" / "raw", ["dog", "eel"], per_class=15)
    env = isolated_env(tmp_path)
    search = sets(
        {
            "search.strategies": "[head, scratch]",  # head trials, then the scratch baseline's epochs
            "search.head_trials": 2,
            "search.scratch_epochs": 30,
            "search.scratch_patience": 30,
            "search.scratch_patience_steps": "null",
            "finetune.head_epochs": 3,
        }
    )
    victim = subprocess.Popen(
        cli(root, "train", *search), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while search_state(root)[1] < 3:  # every head trial finished, the scratch baseline 3 epochs in
        assert victim.poll() is None, "the run ended before the search was 3 scratch epochs in"
        assert time.time() < deadline, "the search never reached its scratch baseline"
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    heads, epochs = search_state(root)
    assert heads == 2

    done = subprocess.run(cli(root, "train", *search), env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    kept = f"2 head trials and scratch baseline after epoch {epochs}"
    assert f"search: resumed from the killed run's {kept}" in done.stderr
    assert (
        f"resumed the killed search's {kept}"
        in json.loads((root / "reports" / "train.json").read_text())["strategy"]
    )
    client = use_store(root)
    assert len(client.search_model_versions("name='transferops-classifier'")) == 1
    assert not list((root / ".transferops" / "checkpoints").glob("finetune-*"))
