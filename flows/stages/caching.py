"""Stage reuse through Prefect's result cache.

A stage's result is reused when nothing that decides it has changed. `StageKey` is the
Prefect cache policy that says what that is, stage by stage:

- every input but the flow's bookkeeping (`run`), each by its fingerprint: a param section
  by its values, a folder by a stat snapshot of its files (names, sizes, mtimes, inodes: what
  DVC's stat cache uses), an upstream result by its own `fingerprint` (the validated manifest
  and the split table by content; trained things by the key of the stage that made them);
- the code: the syntax tree (without comments and docstrings) of the stage's own module and of
  every project module it can reach through its imports, found from the code
  (`tasks.core.codekey`: the import closure, never a list kept by hand);
- the environment (the installed transferops and whether it is editable, the lock file,
  Python, TensorFlow and Keras versions).

The epoch checkpoints of a training are keyed by the same key (`stage_key`), so a resume never
continues from weights that other code produced.

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
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.filesystems import LocalFileSystem
from prefect.transactions import get_transaction
from prefect.utilities.hashing import hash_objects
from pydantic import BaseModel

from tasks.core import codekey
from tasks.data import ingest, lineage

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
def code_version(module: str) -> str:
    """The digest of the code stage module `module` can run (once per process: the code a
    process runs is the code it imported)."""
    return codekey.code_digest((module,))


@cache
def environment_version() -> str:
    return lineage.digest(lineage.environment())


@dataclass
class StageKey(CachePolicy):
    module: str = ""  # the stage's module (`flows.stages.finetune`): its import closure keys it
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
            code_version(self.module),
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


def cached_stage(name: str, folders: tuple[str, ...] = ()) -> Callable[[Callable], Any]:
    """A decorator: the function as a Prefect task whose result is persisted and reused under
    `StageKey`, keyed by the code of the function's module and all it imports."""

    def decorate(function: Callable) -> Any:
        return task(
            name=name,
            cache_policy=StageKey(module=function.__module__, folders=folders),
            persist_result=True,
            result_serializer="pickle",
        )(function)

    return decorate


def stage_key() -> str:
    """Inside a cached stage: the key its result is stored under (the result's fingerprint)."""
    transaction = get_transaction()
    if transaction is None or not transaction.key:
        raise RuntimeError("stage_key() is only known inside a cached stage")
    return transaction.key
