"""Stage reuse through Prefect's result cache.

A stage's result is reused when nothing that decides it has changed. `StageKey` is the
Prefect cache policy that says what that is, stage by stage:

- every input but the flow's bookkeeping (`run`), each by its fingerprint: a param section
  by its values, a folder by a stat snapshot of its files (names, sizes, mtimes, inodes: what
  DVC's stat cache uses), an upstream result by its own `fingerprint` (the validated manifest
  and the split table by content; trained things by the key of the stage that made them);
- the source of the `tasks/` modules that compute the stage, and of the task itself;
- the environment (lock file, Python, TensorFlow and Keras versions).

Prefect's default key includes the flow-run id, so it never hits across runs. Results are
pickled under `<root>/.transferops/results/`, each written whole or not at all
(`write_whole`; safe to delete: the next run recomputes);
`--force` recomputes and overwrites them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import CachePolicy, TaskSource
from prefect.context import TaskRunContext
from prefect.filesystems import LocalFileSystem
from prefect.transactions import get_transaction
from prefect.utilities.hashing import hash_objects
from pydantic import BaseModel

from tasks.data import ingest, lineage

TASKS_DIR = Path(lineage.__file__).parents[1]
SKIPPED = ("run",)  # bookkeeping inputs that never decide a result


def fingerprint(value: Any) -> Any:
    """What of `value` decides a stage's result, as something JSON-able."""
    own = getattr(value, "fingerprint", None)
    if isinstance(own, str):
        return own
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [fingerprint(v) for v in value]
    if isinstance(value, dict):
        return {str(k): fingerprint(v) for k, v in value.items()}
    raise TypeError(f"{type(value).__name__} has no fingerprint: give it one to use it as a stage input")


@cache
def code_version(modules: tuple[str, ...]) -> str:
    """A hash of the source of each module, named relative to `tasks` (`data.ingest` is
    tasks/data/ingest.py)."""
    return lineage.digest({m: lineage.file_sha256(TASKS_DIR / f"{m.replace('.', '/')}.py") for m in modules})


@cache
def environment_version() -> str:
    return lineage.digest(lineage.environment())


@dataclass
class StageKey(CachePolicy):
    code: tuple[str, ...] = ()  # modules of tasks/ whose source decides the result (`data.ingest`)
    folders: tuple[str, ...] = ()  # inputs that are folders: keyed by a stat snapshot

    def check_inputs(self, inputs: dict[str, Any]) -> None:
        """Raise (TypeError) if an input has no fingerprint. Prefect only logs an error raised
        while it computes a key, and then runs the stage uncached: a lost cache nobody sees."""
        for name, value in inputs.items():
            if name not in SKIPPED and name not in self.folders:
                fingerprint(value)

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        parts = {
            name: ingest.snapshot(Path(value))
            if name in self.folders and value is not None
            else fingerprint(value)
            for name, value in sorted(inputs.items())
            if name not in SKIPPED
        }
        return hash_objects(
            task_ctx.task.name,
            parts,
            code_version(self.code),
            TaskSource().compute_key(task_ctx, inputs, flow_parameters),
            environment_version(),
            raise_on_failure=True,
        )


def write_whole(path: Path, content: bytes) -> str:
    """Write `content` to `path` so that the file appears whole or not at all: under a temporary
    name beside it, synced, then renamed. A failed write (a full disk) raises with the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    return str(path)


def _write_path(self: LocalFileSystem, path: str, content: bytes, _sync: bool = True) -> str:
    return write_whole(self._resolve_path(path), content)


async def _awrite_path(self: LocalFileSystem, path: str, content: bytes) -> str:
    return write_whole(self._resolve_path(path), content)


# Prefect's LocalFileSystem (the storage of stage results) writes a result file in place, so a
# full disk or a kill mid-write leaves a truncated file for a later run to trip on. Its two
# write methods are replaced by whole-file writes; a custom block would have to be saved to the
# Prefect server to be used as result storage. Reading is unchanged.
LocalFileSystem.write_path = _write_path  # type: ignore[method-assign,assignment]
LocalFileSystem.awrite_path = _awrite_path  # type: ignore[method-assign,assignment]


def cached_stage(name: str, code: tuple[str, ...], folders: tuple[str, ...] = ()) -> Callable:
    """A Prefect task whose result is persisted and reused under `StageKey`."""
    return task(
        name=name,
        cache_policy=StageKey(code=code, folders=folders),
        persist_result=True,
        result_serializer="pickle",
    )


def stage_key() -> str:
    """Inside a cached stage: the key its result is stored under (the result's fingerprint)."""
    transaction = get_transaction()
    if transaction is None or not transaction.key:
        raise RuntimeError("stage_key() is only known inside a cached stage")
    return transaction.key
