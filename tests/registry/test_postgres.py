"""The whole cycle on PostgreSQL: MLflow's backend store and Prefect's server database on a
real PostgreSQL (Debian's, started here in a temp folder with initdb and pg_ctl on 127.0.0.1),
an `mlflow server` and a `prefect server` on them, and transferops run as a user would, with
only MLFLOW_TRACKING_URI and PREFECT_API_URL set: train (the first champion), then retrain on
new data (a challenger through the gate)."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import free_port, make_image_folder, sets, start_mlflow_server, wait_until_up

pytestmark = pytest.mark.slow

MODEL = "transferops-classifier"


def postgres_binary(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on 127.0.0.1 with databases `mlflow` and `prefect`; its URL."""
    initdb, pg_ctl = postgres_binary("initdb"), postgres_binary("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
    import psycopg2

    folder = Path(tempfile.mkdtemp(prefix="transferops-pg-"))
    owner: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: its own user owns the cluster
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        owner = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = folder / "data"
    subprocess.run(
        [*owner, initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*owner, pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-w", "-o", options, "start"],
        check=True,
        capture_output=True,
    )
    url = f"postgresql://postgres@127.0.0.1:{port}"
    try:
        connection = psycopg2.connect(f"{url}/postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            for database in ("mlflow", "prefect"):
                cursor.execute(f"CREATE DATABASE {database}")
        connection.close()
        yield url
    finally:
        subprocess.run([*owner, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def count(url: str, query: str) -> int:
    import psycopg2

    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(query)
        return int(cursor.fetchone()[0])


@pytest.fixture(scope="module")
def servers(postgres, tmp_path_factory):
    """`mlflow server` and `prefect server` on the PostgreSQL databases; their URLs."""
    home = tmp_path_factory.mktemp("servers")
    mlflow_port, prefect_port = free_port(), free_port()
    # SQLAlchemy's driver names: psycopg2 for MLflow, asyncpg for Prefect
    psycopg2 = postgres.replace("postgresql:", "postgresql+psycopg2:")
    tracking = start_mlflow_server(home, mlflow_port, backend=f"{psycopg2}/mlflow")
    asyncpg = postgres.replace("postgresql:", "postgresql+asyncpg:")
    env = {
        **os.environ,
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"{asyncpg}/prefect",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    orchestration = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(prefect_port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_until_up(f"http://127.0.0.1:{prefect_port}/api/health", orchestration)
    yield f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{prefect_port}/api"
    for process in (tracking, orchestration):
        process.terminate()
        process.wait(timeout=60)


def transferops(root: Path, servers: tuple[str, str], *args: str) -> dict:
    """The CLI as a user runs it, against the servers; its JSON report."""
    tracking, api = servers
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "PREFECT_API_URL": api}
    env.pop("MLFLOW_REGISTRY_URI", None)
    options = sets(
        {
            "select.candidates": "[{uri: 'keras:MobileNetV3Small', weights: none, image_size: 32}]",
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
