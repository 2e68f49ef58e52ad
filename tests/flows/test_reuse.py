"""Stage reuse (Prefect's result cache, keyed in flows.stages.caching) on the real pipeline: an
unchanged rerun trains nothing and registers nothing; a finetune change reruns from finetune;
`--force` recomputes everything yet adds no second version of the same training; a tracking
server that dies mid-run loses no training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import mlflow
import pytest
from conftest import free_port, make_image_folder, sets, start_mlflow_server, wait_for_checkpoint
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import FlowRunSort

from flows.cli import main

pytestmark = pytest.mark.slow

MODEL = "transferops-classifier"
STAGES = ["validate", "split", "select", "finetune", "evaluate"]
FAST = sets(
    {
        "images.candidates": "[{uri: 'keras:MobileNetV3Small', weights: none, size: 32}]",
        "finetune.head_epochs": 3,
        "finetune.finetune_epochs": 1,
        "finetune.batch_size": 16,
        "search.enabled": "false",
        "register.serve_runtime": "keras",  # the ONNX check is tested end to end, not here
    }
)


def train(root, *extra: str) -> dict:
    assert main(["--root", str(root), *FAST, "train", *extra]) == 0
    return json.loads((root / "reports" / "train.json").read_text())


def versions(root) -> list[str]:
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    mlflow.set_registry_uri(mlflow.get_tracking_uri())
    return sorted(str(v.version) for v in MlflowClient().search_model_versions(f"name='{MODEL}'"))


def last_task_states() -> dict[str, str]:
    """Task name -> state name of the newest flow run, as Prefect's API has them."""
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)[0]
        only_it = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
        task_runs = client.read_task_runs(flow_run_filter=only_it)
    return {t.name.rsplit("-", 1)[0]: t.state.name for t in task_runs}


def test_unchanged_rerun_reuses_every_stage_and_a_change_reruns_from_where_it_matters(
    tmp_path, prefect_harness
):
    root = tmp_path / "project"
    make_image_folder(root / "data" / "raw", ["dog", "eel"], per_class=15)
    first = train(root)
    assert first["reused"] == []
    assert versions(root) == ["1"]

    # the champion now (v1) is this very training: its test scores are ours, evaluate is reused
    # (one rerun checks all of it: a third run checked the same again, ~15 s of CI)
    again = train(root)
    assert again["champion_before"]["version"] == "1"
    assert again["champion_before"]["metrics"] == first["test"]
    assert again["reused"] == STAGES
    assert again["registered"]["version"] == "1" and versions(root) == ["1"]
    assert "already registered as v1" in again["registered"]["reason"]
    assert again["test"] == first["test"]
    states = last_task_states()
    assert [states[s] for s in STAGES] == ["Cached"] * 5 and states["register"] == "Completed"
    client = MlflowClient()
    stage_runs = client.search_runs(
        [client.get_experiment_by_name("transferops").experiment_id],
        f"tags.mlflow.parentRunId = '{again['mlflow_run_id']}'",
    )
    assert {r.data.tags["stage"] for r in stage_runs if r.data.tags.get("reused") == "true"} == set(STAGES)
    finetune_run = next(r for r in stage_runs if r.data.tags["stage"] == "finetune")
    assert finetune_run.data.metrics["epochs.head"] == 3  # logged again from the reused result

    changed = train(root, "--set", "finetune.head_epochs=4")
    assert changed["reused"] == ["validate", "split", "select"]
    assert changed["registered"]["version"] == "2"

    forced = train(root, "--force")
    assert forced["reused"] == []
    assert forced["registered"]["version"] == "1"  # the same training: found, not added again
    assert versions(root) == ["1", "2"]

    make_image_folder(root / "data" / "raw", ["dog"], per_class=1, seed=9)  # new data
    grown = train(root)
    assert grown["reused"] == [] and grown["examples"] != first["examples"]
    assert versions(root) == ["1", "2", "3"]


def test_a_tracking_server_outage_mid_run_loses_no_training(tmp_path):
    """The server is killed during fine-tuning: the run fails in one line after its bounded
    retries; the trained model is on disk (Prefect's result store), so once the server is back
    the rerun registers it without training again, and exactly one version exists."""
    root, store = tmp_path / "project", tmp_path / "server"
    make_image_folder(root / "data" / "raw", ["dog", "eel"], per_class=15)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "MLFLOW_TRACKING_URI": url}
    env.pop("PREFECT_API_URL", None)
    env.pop("MLFLOW_REGISTRY_URI", None)
    command = [
        sys.executable,
        "-m",
        "flows.cli",
        "--root",
        str(root),
        *FAST,
        "--set",
        "finetune.head_epochs=60",
        "--set",
        "finetune.patience=60",
        "train",
    ]
    server = start_mlflow_server(store, port)
    try:
        run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_checkpoint(run, root, 2)
    finally:  # the outage (or, when the run failed early, the clean-up)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    _, stderr = run.communicate(timeout=600)
    assert run.returncode == 1
    assert "Traceback" not in stderr
    last = [line for line in stderr.splitlines() if line.startswith("transferops:")][-1]
    assert last.startswith(f"transferops: MLflow tracking server {url} stopped answering"), last

    server = start_mlflow_server(store, port)
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        summary = json.loads((root / "reports" / "train.json").read_text())
        assert "finetune" in summary["reused"]  # trained once, in the run the outage stopped
        client = MlflowClient(tracking_uri=url, registry_uri=url)
        found = client.search_model_versions(f"name='{MODEL}'")
        assert [str(v.version) for v in found] == ["1"] and summary["registered"]["version"] == "1"
        experiment_id = client.get_experiment_by_name("transferops").experiment_id
        assert client.search_runs([experiment_id], "attributes.status = 'RUNNING'") == []
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
