"""A write to the local SQLite store waits out another writer's lock longer than MLflow's own
20 s (tasks.reporting.tracking.SQLITE_BUSY_S), instead of failing the run."""

from __future__ import annotations

import subprocess
import sys

from mlflow import MlflowClient

from tasks.reporting import tracking

HOLD = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("COMMIT")
"""


def test_a_write_waits_out_a_lock_longer_than_mlflows_20_seconds(tmp_path):
    experiment = tracking.configure(tmp_path / "mlflow")
    client = MlflowClient()
    run = client.create_run(experiment)
    db = tmp_path / "mlflow" / "mlflow.db"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(db), "28"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        client.set_tag(run.info.run_id, "written", "after the lock")  # MLflow alone fails after 20 s
    finally:
        holder.wait(timeout=120)
    assert holder.returncode == 0
    assert client.get_run(run.info.run_id).data.tags["written"] == "after the lock"
