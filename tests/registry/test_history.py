"""Champion history, promote and rollback through the CLI, on a real MLflow store and on a real
`mlflow server`: every move is recorded in MLflow (registered-model tags), so any client sees it."""

from __future__ import annotations

import json

import mlflow
import pytest
from conftest import free_port, start_mlflow_server
from mlflow import MlflowClient

from flows.cli import main
from tasks.registry import history
from tasks.reporting import tracking

MODEL = "transferops-classifier"


def three_versions(client: MlflowClient) -> None:
    """v1 champion (by the gate), v2 champion (by the gate), v3 registered but kept."""
    client.create_registered_model(MODEL)
    experiment = mlflow.set_experiment("history-test").experiment_id
    for _ in range(3):
        run = client.create_run(experiment)
        client.create_model_version(MODEL, f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias(MODEL, "champion", "1")
    history.record(MODEL, None, "1", "gate", "no champion yet")
    client.set_registered_model_alias(MODEL, "champion", "2")
    history.record(MODEL, "1", "2", "gate", "macro_f1 +3.0 pts, 95% CI [+1.0, +5.0], p=0.01: promoted")


def cli(root, capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--root", str(root), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def round_trip(root, client: MlflowClient, capsys) -> None:
    three_versions(client)
    code, out, _ = cli(root, capsys, "promote", "3", "--reason", "reviewed the gallery; v3 handles boots")
    assert code == 0 and "v2 -> v3  by hand: reviewed the gallery" in out, _
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "3"

    code, out, _ = cli(root, capsys, "rollback", "--reason", "v3 mislabels bags in production")
    assert code == 0 and "v3 -> v2  by rollback: v3 mislabels bags" in out
    code, out, _ = cli(root, capsys, "rollback")  # further back along the promotions
    assert code == 0 and "v2 -> v1  by rollback" in out
    code, _, err = cli(root, capsys, "rollback")
    assert code == 2 and "v1 replaced no earlier champion" in err and "Traceback" not in err
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"

    code, out, _ = cli(root, capsys, "history", "--json")
    moves = json.loads(out)
    assert [(m["from_version"], m["to_version"], m["by"]) for m in moves] == [
        (None, "1", "gate"),
        ("1", "2", "gate"),
        ("2", "3", "hand"),
        ("3", "2", "rollback"),
        ("2", "1", "rollback"),
    ]
    # what another MLflow client sees: the tags on the registered model and on the version
    tags = client.get_registered_model(MODEL).tags
    assert json.loads(tags["champion_move.0003"])["why"] == "reviewed the gallery; v3 handles boots"
    assert client.get_model_version(MODEL, "1").tags["champion_reason"].startswith("by rollback")

    code, out, _ = cli(root, capsys, "status")
    assert code == 0 and "last champion moves" in out and "v2 -> v1  by rollback" in out

    code, _, err = cli(root, capsys, "promote", "9", "--reason", "x")
    assert code == 2 and "has no version 9" in err
    code, _, err = cli(root, capsys, "promote", "1", "--reason", "x")
    assert code == 2 and "already the champion" in err


def test_promote_rollback_history_on_the_local_store(tmp_path, capsys):
    tracking.configure(tmp_path / "mlflow")
    round_trip(tmp_path, MlflowClient(), capsys)


@pytest.mark.slow
def test_promote_rollback_history_through_a_tracking_server(tmp_path, capsys, monkeypatch):
    port = free_port()
    server = start_mlflow_server(tmp_path, port)
    url = f"http://127.0.0.1:{port}"
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        tracking.configure(tmp_path / "mlflow")
        round_trip(tmp_path, MlflowClient(tracking_uri=url, registry_uri=url), capsys)
    finally:
        server.terminate()
        server.wait(timeout=30)
