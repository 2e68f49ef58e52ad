"""Real servers on 127.0.0.1 for benchmarks and tests: a throwaway PostgreSQL cluster (Debian's
`initdb`/`pg_ctl` in a temp folder), an `mlflow server` and a `prefect server` on a database URL.
Each is a context manager that stops what it started."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


class ServerError(RuntimeError):
    """A server did not start (its reason in one line)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    """Poll `url` until it answers 200; kill the process and raise if it dies or time runs out."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.time() > deadline or process.poll() is not None:
                process.kill()
                raise ServerError(f"server did not start on {url}") from None
            time.sleep(1)


def postgres_binary(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@contextlib.contextmanager
def postgres(databases: tuple[str, ...] = ("mlflow", "prefect")) -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 with `databases`; its URL (postgresql://postgres@host:port)."""
    initdb, pg_ctl = postgres_binary("initdb"), postgres_binary("pg_ctl")
    if not initdb or not pg_ctl:
        raise ServerError("PostgreSQL is not installed: apt-get install postgresql")
    import psycopg2

    folder = Path(tempfile.mkdtemp(prefix="transferops-pg-"))
    owner: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: its own user owns the cluster
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        owner = ["runuser", "-u", "postgres", "--"]
    port, data = free_port(), folder / "data"
    try:
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
        connection = psycopg2.connect(f"{url}/postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            for database in databases:
                cursor.execute(f"CREATE DATABASE {database}")
        connection.close()
        yield url
    finally:
        subprocess.run([*owner, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def start_mlflow_server(store: Path, port: int, backend: str | None = None) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1:`port` (`backend`, by default an SQLite store under
    `store`; proxied artifacts under `store`), in its own process group (a caller can kill it
    with everything it started). Without MLflow's job execution (GenAI jobs transferops never
    runs): it starts a dozen huey worker processes that would take a 2-core machine's CPU."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            backend or f"sqlite:///{store / 'server.db'}",
            "--artifacts-destination",
            str(store / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    wait_until_up(f"http://127.0.0.1:{port}/health", process)
    return process


@contextlib.contextmanager
def tracking_and_orchestration(home: Path, database: str | None = None) -> Iterator[tuple[str, str]]:
    """`mlflow server` and `prefect server` on `database` (a postgresql:// URL with databases
    `mlflow` and `prefect`; None: each on its own SQLite file under `home`); their URLs, for
    MLFLOW_TRACKING_URI and PREFECT_API_URL."""
    mlflow_port, prefect_port = free_port(), free_port()
    # SQLAlchemy's driver names: psycopg2 for MLflow, asyncpg for Prefect
    backend = database and f"{database.replace('postgresql:', 'postgresql+psycopg2:')}/mlflow"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    if database:
        asyncpg = database.replace("postgresql:", "postgresql+asyncpg:")
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = f"{asyncpg}/prefect"
    started: list[subprocess.Popen] = []
    try:
        started.append(start_mlflow_server(home, mlflow_port, backend=backend))
        command = ["server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)]
        started.append(
            subprocess.Popen(
                [sys.executable, "-m", "prefect", *command],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        wait_until_up(f"http://127.0.0.1:{prefect_port}/api/health", started[-1])
        yield f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{prefect_port}/api"
    finally:
        for process in started:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
