"""Process-wide settings for running flows on one machine, applied by the entry points.

Prefect's local server keeps its state in SQLite, which on 2 busy cores answers
"database is locked" when a statement waits longer than Prefect's 10 s default (SQLite's own
busy_timeout is 60 s), and the temporary server needs longer than 20 s to start (migrations)
while TensorFlow loads. Analytics writes a telemetry row on every start that also races for
the lock, and sends nothing useful offline. Every value is a default: the environment wins.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import warnings
from typing import Any

ENV_DEFAULTS = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ start-up chatter
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_DATABASE_TIMEOUT": "60",
    "PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT": "60",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    # A tracking server that stops answering fails a call in about 30 s, not MLflow's default of
    # 7 retries with 2 s backoff and a 120 s timeout (minutes). Raise them for a flaky network.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def apply_env_defaults() -> None:
    """Set each default unless the environment already has the variable."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # Keras' "tf.function retracing" warnings are expected: features are extracted for
    # splits of different sizes.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    # A reused (unpickled) model restores its weights, not its optimizer's slots, and says so.
    warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
    # MLflow registers its local-file dataset source twice and warns that a path "can be
    # interpreted in multiple ways: LocalArtifactDatasetSource, LocalArtifactDatasetSource".
    warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")


_server_start: threading.Thread | None = None


def start_prefect_server() -> None:
    """Without a Prefect API URL, flows run on a temporary local server that takes seconds to
    start: start it now in a thread, while TensorFlow imports (`wait_for_prefect_server`
    joins it before the first flow runs). Prefect's own server class, so the flow engine
    finds it running and uses it."""
    global _server_start
    from prefect.settings import get_current_settings

    if get_current_settings().api.url or _server_start is not None:
        return
    _server_start = threading.Thread(target=_server_class()().start, daemon=True)
    _server_start.start()


# Run in the temporary server's process before uvicorn: it stops the server (SIGTERM, which
# uvicorn handles cleanly) once its parent, this run, is gone, even when the run was killed
# with SIGKILL and its atexit hooks never ran. A poll, not prctl(PR_SET_PDEATHSIG): that fires
# when the *thread* that started the child ends, and the server is started from a thread.
_WATCH_PARENT = """
import os, runpy, signal, sys, threading, time
parent = int(sys.argv.pop(1))
def watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(15)
    os._exit(1)
threading.Thread(target=watch, daemon=True).start()
sys.argv[0] = "uvicorn"
runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)
"""


# The temporary server's output (errors only) goes to this process's stderr while the run
# goes on; once the run has said why it ends (its last line), what the server says while it is
# stopped (uvicorn's "Application shutdown failed") is dropped, so that line stays the last.
_server_quiet = threading.Event()


def _forward(stream: Any) -> None:
    for line in iter(stream.readline, b""):
        if not _server_quiet.is_set():
            sys.stderr.write(line.decode(errors="replace"))


def silence_prefect_server() -> None:
    """Nothing more from the temporary server on stderr (the run is about to end)."""
    _server_quiet.set()


def _server_class() -> type:
    """Prefect's temporary-server class, whose process dies with the run that started it."""
    from prefect.server.api.server import SubprocessASGIServer

    class ServerOfThisRun(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen:
            """Prefect's own command (prefect 3.x, pinned), run under `_WATCH_PARENT`."""
            import prefect
            from prefect.settings import get_current_settings

            app = ["--app-dir", str(prefect.__module_path__.parent), "--factory"]
            app += ["prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port)]
            app += ["--log-level", "error", "--lifespan", "on"]
            process = subprocess.Popen(
                [sys.executable, "-c", _WATCH_PARENT, str(os.getpid()), *app],
                env={
                    **os.environ,
                    "PREFECT_UI_ENABLED": "0",
                    "PREFECT__SERVER_EPHEMERAL": "1",
                    "PREFECT__SERVER_FINAL": "1",
                    **get_current_settings().to_environment_variables(exclude_unset=True),
                },
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            # ours to read: Prefect reads a server's stdout to its end when it fails to answer in
            # time, which never comes while the server is alive
            output, process.stdout = process.stdout, None
            threading.Thread(target=_forward, args=(output,), daemon=True).start()
            return process

    return ServerOfThisRun


def wait_for_prefect_server() -> None:
    if _server_start is not None:
        _server_start.join()
