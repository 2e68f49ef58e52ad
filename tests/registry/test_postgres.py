"""The whole cycle on PostgreSQL: MLflow's backend store and Prefect's server database on a
real PostgreSQL (Debian's, started here in a temp folder with initdb and pg_ctl on 127.0.0.1),
an `mlflow server` and a `prefect server` on them, and transferops run as a user would, with
only MLFLOW_TRACKING_URI and PREFECT_API_URL set: train (the first champion), then retrain on
new data (a challenger through the gate)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_image_folder, sets

from bench import servers as real

pytestmark = pytest.mark.slow

MODEL = "transferops-classifier"


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on 127.0.0.1 with databases `mlflow` and `prefect`; its URL."""
    if not real.postgres_binary("initdb") or not real.postgres_binary("pg_ctl"):
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
    with real.postgres() as url:
        yield url


def count(url: str, query: str) -> int:
    import psycopg2

    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(query)
        return int(cursor.fetchone()[0])


@pytest.fixture(scope="module")
def servers(postgres, tmp_path_factory):
    """`mlflow server` and `prefect server` on the PostgreSQL databases; their URLs."""
    with real.tracking_and_orchestration(tmp_path_factory.mktemp("servers"), postgres) as urls:
        yield urls


def transferops(root: Path, servers: tuple[str, str], *args: str) -> dict:
    """The CLI as a user runs it, against the servers; its JSON report."""
    tracking, api = servers
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "PREFECT_API_URL": api}
    env.pop("MLFLOW_REGISTRY_URI", None)
    options = sets(
        {
            "images.candidates": "[{uri: 'keras:MobileNetV3Small', weights: none, size: 32}]",
            "finetune.head_epochs": 3,
            "finetune.finetune_epochs": 1,
            "search.enabled": "false",
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "--root", str(root), *options, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((root / "reports" / f"{args[0]}.json").read_text())


def test_train_then_retrain_on_postgresql(postgres, servers, tmp_path):
    root = tmp_path / "project"
    make_image_folder(root / "data" / "raw", ["dog", "eel"], per_class=15, seed=1)
    first = transferops(root, servers, "train")
    assert first["registered"]["version"] == "1" and "champion" in first["registered"]["aliases"]

    make_image_folder(root / "data" / "raw", ["dog", "eel"], per_class=6, seed=2)  # new data arrives
    second = transferops(root, servers, "retrain")
    assert second["registered"]["version"] == "2"
    assert second["champion_before"]["version"] == "1"  # the gate compared with the champion

    # everything went to PostgreSQL, nothing to a local store
    assert not (root / "mlflow").exists()
    assert count(f"{postgres}/mlflow", f"SELECT count(*) FROM model_versions WHERE name = '{MODEL}'") == 2
    assert (
        count(f"{postgres}/mlflow", "SELECT count(*) FROM registered_model_aliases WHERE alias = 'champion'")
        == 1
    )
    runs = count(f"{postgres}/mlflow", "SELECT count(*) FROM runs WHERE status = 'FINISHED'")
    assert runs >= 2 * 6  # a parent run and one per stage, both flows
    flows = "SELECT count(*) FROM flow_run WHERE state_type = 'COMPLETED'"
    assert count(f"{postgres}/prefect", flows) >= 2
