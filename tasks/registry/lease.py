"""A lock held in the MLflow registry itself, for changes that must not interleave across
processes and machines sharing one tracking server: moving `champion` and numbering its history.

MLflow has no transactions and no conditional writes, but creating a registered model is
create-if-absent: the store's unique key on the name refuses a second one
(RESOURCE_ALREADY_EXISTS). So the lock of model `m` is a registered model `m.lock`: whoever
creates it holds it, and deletes it when done. The creator writes a random token into it in
the same call, so a create that MLflow retried after a timeout is recognised as its own. A lock
whose holder died is broken once it has been seen, unchanged, for `stale_s` (measured here,
so clocks need not agree).
"""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks.core.errors import UserError

SUFFIX = ".lock"
TOKEN = "transferops.lock_token"


class RegistryBusy(UserError):
    """Another process held the registry lock for longer than we wait."""


def _holder(client: MlflowClient, lock: str) -> tuple[str, str] | None:
    """(token, holder) of the lock, None when nobody holds it."""
    try:
        model = client.get_registered_model(lock)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return model.tags.get(TOKEN, ""), model.tags.get("holder", "unknown")


@contextmanager
def held(name: str, wait_s: float = 300.0, stale_s: float = 600.0) -> Iterator[None]:
    """Hold the registry lock of model `name` (see the module's note); raise RegistryBusy after
    `wait_s` of waiting for another holder."""
    client = MlflowClient()
    lock, token = f"{name}{SUFFIX}", uuid.uuid4().hex
    holder = f"pid {os.getpid()} on {socket.gethostname()}"
    deadline = time.monotonic() + wait_s
    seen: tuple[tuple[str, str] | None, float] = (None, time.monotonic())
    delay = 0.05
    while True:
        try:
            client.create_registered_model(
                lock,
                tags={TOKEN: token, "holder": holder},
                description=f"transferops: held while the champion of {name} moves (by {holder})",
            )
            break
        except MlflowException as exc:
            # RESOURCE_DOES_NOT_EXIST: a create that raced the last holder's delete on the server
            # (seen in CI, `mlflow server` on SQLite, the two at once): look again, as when it exists
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                raise
        now = time.monotonic()
        current = _holder(client, lock)
        if current is not None and current[0] == token:
            break  # our own create, retried by MLflow after a timeout
        if current != seen[0]:
            seen = (current, now)
        elif current is not None and now - seen[1] > stale_s and _holder(client, lock) == current:
            _delete(client, lock)  # its holder died holding it (checked again just before)
            continue
        if now > deadline:
            by = current[1] if current else "someone"
            raise RegistryBusy(
                f"the registry lock {lock} has been held by {by} for over {wait_s:.0f} s; run again "
                f"later, or delete the registered model {lock} if its holder is gone"
            )
        time.sleep(delay * (1 + random.random()))
        delay = min(delay * 2, 2.0)
    try:
        yield
    finally:
        if (_holder(client, lock) or ("",))[0] == token:
            _delete(client, lock)


def _delete(client: MlflowClient, lock: str) -> None:
    try:
        client.delete_registered_model(lock)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
