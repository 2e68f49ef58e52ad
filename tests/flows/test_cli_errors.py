"""Every expected failure of the command line is one line, a non-zero exit and no traceback."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys

import pytest
import sqlalchemy
from conftest import free_port
from mlflow.exceptions import MlflowException

from flows import errors
from flows.cli import main


def run_cli(*args: str, env: dict[str, str] | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=120,
    )


def test_an_unreachable_tracking_server_is_one_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    done = run_cli("--root", str(tmp_path), "status", env={"MLFLOW_TRACKING_URI": url})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == (
        f"transferops: MLflow tracking server {url} does not answer (Connection refused): start it, "
        "or unset MLFLOW_TRACKING_URI to use the local store in mlflow/"
    )
    assert "Traceback" not in done.stderr


def test_an_unreachable_prefect_api_is_one_line(tmp_path, capsys, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", url)
    (tmp_path / "data" / "raw").mkdir(parents=True)
    assert main(["--root", str(tmp_path), "train"]) == 1
    err = capsys.readouterr().err
    assert f"transferops: Prefect API {url} does not answer (Connection refused)" in err


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/data/mlflow/x.db"),
            "disk full on / (",
        ),
        (OSError(errno.ENOSPC, "No space left on device"), "disk full while writing "),
        (
            PermissionError(errno.EACCES, "Permission denied", "/data/raw/a.png"),
            "permission denied: /data/raw/a",
        ),
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y"),
            "/x/y: No such file or directory",
        ),
        (
            MlflowException("(raised as a result of Query-invoked autoflush) database or disk is full"),
            "disk full while MLflow wrote to ",
        ),
        (
            sqlalchemy.exc.OperationalError("UPDATE", {}, sqlite3.OperationalError("database is locked")),
            "a database stayed locked by another writer for over 120 s",
        ),
    ],
)
def test_expected_failures_are_explained(exc, expected):
    assert errors.explain(exc).startswith(expected)


def test_a_bug_is_not_explained_away():
    assert errors.explain(ZeroDivisionError("division by zero")) is None


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--set", "images.candidates=[keras:NotAModel]", "train"],
            "images.candidates: keras:NotAModel is not a keras.applications model",
        ),
        (
            ["--set", "images.candidates=['file:/etc/passwd']", "train"],
            "--set images.candidates.0.uri: a candidate is registry:<model>@<alias>",
        ),
        (
            ["--set", "images.candidates=['minilm:all-MiniLM-L6-v2']", "train"],
            "images.candidates: minilm:all-MiniLM-L6-v2 takes texts, and the data are images",
        ),
        (
            ["--set", "images.candidates=['file:missing/backbone.keras']", "retrain"],
            "images.candidates: file:missing/backbone.keras: no such model file",
        ),
        (["--set", "register.model_name=a'b", "train"], "--set register.model_name: a model name is"),
        (["--set", "register.model_name=../../x", "train"], "--set register.model_name: a model name is"),
        (["--set", "split.val_fraction=0", "train"], "--set split.val_fraction: Input should be greater"),
        (["schedule", "--cron", "61 * * * *"], "--cron '61 * * * *': not a cron schedule"),
    ],
)
def test_bad_settings_end_before_any_flow_in_one_line(tmp_path, args, expected, capsys, monkeypatch):
    """In this process (the command line's own `main`); the process's exit status and stderr
    are checked once, by the test below."""
    (tmp_path / "data" / "raw" / "cat").mkdir(parents=True)
    monkeypatch.setenv("PREFECT_API_URL", "")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    try:
        code = main(["--root", str(tmp_path), *args])
    except SystemExit as exit:
        code = exit.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err[-2000:]
    assert lines[-1].startswith(f"transferops: {expected}"), lines[-1]
    assert "Traceback" not in err and "temporary server" not in err
    assert not (tmp_path / "mlflow").exists()  # no store touched, no lock or run left behind


def test_a_bad_setting_ends_the_process_with_status_2_and_one_line(tmp_path):
    (tmp_path / "data" / "raw" / "cat").mkdir(parents=True)
    env = {"PREFECT_API_URL": "", "MLFLOW_TRACKING_URI": ""}
    done = run_cli("--root", str(tmp_path), "--set", "split.val_fraction=0", "train", env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("transferops: --set split.val_fraction: Input")
    assert "Traceback" not in done.stderr and not (tmp_path / "mlflow").exists()


def test_a_table_with_unusable_rows_ends_before_any_flow_in_one_line(tmp_path):
    table = tmp_path / "tickets.csv"
    table.write_text('text,label\n"Refund please",billing\n"No label here",\n"Bad label","../up"\n')
    done = run_cli("--root", str(tmp_path), "train", "--data", str(table), env={"PREFECT_API_URL": ""})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert lines[-1] == (
        "transferops: tickets.csv: 2 row(s) cannot be used: row 2: no label; row 3: label '../up' cannot "
        "name a class (no '/', '\\', control characters or leading '.') (fix or remove them)"
    )
    assert "Traceback" not in done.stderr and not (tmp_path / "mlflow").exists()
    assert not (tmp_path / "up").exists()
