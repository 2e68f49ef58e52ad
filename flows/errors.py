"""The command line's one error path: every expected failure becomes one line that names what
failed and what to do. Anything else is a bug, and keeps its traceback.

Also here: the checks that run before a flow starts (a tracking server or Prefect API that
does not answer fails in seconds, before any work).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tasks.core.errors import UserError
from tasks.reporting import tracking


class Unavailable(RuntimeError):
    """A service the command needs (tracking server, Prefect API) does not answer."""


def _answers(url: str, timeout: float) -> str | None:
    """None when `url` answers HTTP (any status), else the reason it does not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return str(getattr(reason, "strerror", None) or reason)


def check_services(timeout: float = 10.0) -> None:
    """Fail fast when MLFLOW_TRACKING_URI or PREFECT_API_URL point at a server that does not
    answer (the defaults, a local store and a temporary Prefect server, need no check)."""
    services = (
        ("MLFLOW_TRACKING_URI", "MLflow tracking server", "start it", "use the local store in mlflow/"),
        ("PREFECT_API_URL", "Prefect API", "start `prefect server start`", "run on a temporary local server"),
    )
    for variable, what, start, default in services:
        url = os.environ.get(variable, "")
        if not url.startswith(("http://", "https://")):
            continue
        reason = _answers(url.rstrip("/") + "/health", timeout)
        if reason:
            raise Unavailable(
                f"{what} {url} does not answer ({reason}): {start}, or unset {variable} to {default}"
            )


def check_prefect_api(timeout: float = 10.0) -> None:
    """Inside a flow: when the Prefect API this run reports to (a server, or the run's
    temporary one) stopped answering, stop the process here, before the registry changes.

    One plain request, no retries (Prefect's client backs off for a minute first), and then
    an exit, not an exception: Prefect would spend minutes retrying to report the failure to
    the API that is gone. The MLflow runs are ended FAILED first."""
    import mlflow
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        url = str(client.api_url).rstrip("/")
    if not url.startswith(("http://", "https://")) or "ephemeral-prefect" in url:
        return  # an in-process API: it cannot be lost
    problem = _answers(f"{url}/health", timeout)
    if problem is None:
        return
    while mlflow.active_run() is not None:
        mlflow.end_run("FAILED")
    print(
        f"transferops: the Prefect API at {url} stopped answering ({problem}); nothing was "
        "registered: start it again (or unset PREFECT_API_URL) and rerun, finished stages are reused",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    os._exit(1)


def disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


def _disk_of(path: object) -> str:
    """' on <mount point> (<free> free)' for the disk holding `path`, '' when unknown."""
    if not path:
        return ""
    here = Path(str(path)).absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    mount = here
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        free = shutil.disk_usage(here).free
    except OSError:
        return ""
    return f" on {mount} ({free / 1e9:.1f} GB free)"


def _first_line(text: object) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def explain(exc: BaseException) -> str | None:
    """One line for an expected failure; None for anything else (a bug: show the traceback)."""
    if isinstance(exc, (UserError, Unavailable)):
        return str(exc)
    if disk_full(exc):
        # HDF5 (Keras weights) names the file only in its message
        named = re.search(r"filename = '([^']+)'", str(exc))
        filename = exc.filename or (named.group(1) if named else None)
        where = filename or f"{tempfile.gettempdir()} or the project folder"
        return (
            f"disk full{_disk_of(filename)} while writing {where}: free some space there and run "
            "again (nothing was registered)"
        )
    if isinstance(exc, PermissionError):
        return (
            f"permission denied: {exc.filename or _first_line(exc)}: make it readable/writable by this user, "
            "or point --root/--data elsewhere"
        )
    if isinstance(exc, (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)):
        return str(exc) if exc.filename is None else f"{exc.filename}: {exc.strerror}"
    name = type(exc).__name__
    module = type(exc).__module__
    text = _first_line(exc)
    if module.startswith("mlflow") or name in ("ConnectionError", "MaxRetryError", "ReadTimeout"):
        uri = os.environ.get("MLFLOW_TRACKING_URI", "the local store in mlflow/")
        if "disk is full" in text or "No space left" in text:
            return (
                f"disk full while MLflow wrote to {uri}{_disk_of(uri.removeprefix('sqlite:///'))}: free "
                "some space there and run again (finished stages are reused; nothing was registered)"
            )
        if "database is locked" in text:
            return (
                f"MLflow store {uri} stayed locked by another writer for over "
                f"{tracking.SQLITE_BUSY_S} s; nothing was registered: run again when it is free"
            )
        if "Max retries exceeded" in text or "Connection" in text or "timed out" in text.lower():
            return (
                f"MLflow tracking server {uri} stopped answering: {text[:200]}; start it again and rerun "
                "(finished stages are reused: nothing trained is lost; the champion alias was not moved)"
            )
        return f"MLflow ({uri}): {text[:300]}"
    if module.startswith(("prefect", "httpx")) or "Prefect" in text or "ephemeral" in text:
        return (
            f"Prefect: {text[:300]}: if the temporary server failed to start, run again or use "
            "`prefect server start` with PREFECT_API_URL"
        )
    if module.startswith("sqlalchemy") or name == "OperationalError":
        if "database is locked" in text:
            return (
                f"a database stayed locked by another writer for over {tracking.SQLITE_BUSY_S} s: "
                "run again when it is free"
            )
        return f"database error: {text[:300]}: another transferops may be starting the same store; run again"
    return None


class _NoTracebacks(logging.Filter):
    """Prefect logs a failed flow's traceback; the command line prints one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True


def quiet_prefect_tracebacks() -> None:
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(_NoTracebacks())
