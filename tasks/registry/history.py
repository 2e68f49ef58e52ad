"""Champion history: every move of the `champion` alias, recorded in MLflow itself.

Each move is one tag of the registered model, `champion_move.<0001>` = {"when", "from", "to",
"by", "why"} (JSON), so the MLflow UI and any other client see the same history; the version
moved to also gets `champion_since` and `champion_reason` tags. `by` is "gate" (a run's
promotion), "hand" (`transferops promote`) or "rollback". Nothing here decides whether a
model is good enough: `promote` and `rollback` are a person's decisions, recorded with their
reason. `model_status`: the champion and challenger as they stand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks.core.errors import UserError
from tasks.registry import lease, versions

PREFIX = "champion_move."


@dataclass(frozen=True)
class Move:
    number: int
    when: str  # ISO 8601, UTC
    from_version: str | None
    to_version: str
    by: str  # gate | hand | rollback
    why: str

    def words(self) -> str:
        was = f"v{self.from_version}" if self.from_version else "none"
        when = self.when[:19].replace("T", " ")
        return f"#{self.number}  {when}  {was} -> v{self.to_version}  by {self.by}: {self.why}"


def moves(name: str) -> list[Move]:
    """Every recorded move of `name`'s champion, oldest first ([] for an unknown model)."""
    try:
        tags = MlflowClient().get_registered_model(name).tags
    except MlflowException:
        return []
    found = []
    for key, value in tags.items():
        if key.startswith(PREFIX):
            move = json.loads(value)
            found.append(
                Move(int(key[len(PREFIX) :]), move["when"], move["from"], move["to"], move["by"], move["why"])
            )
    return sorted(found, key=lambda m: m.number)


def record(name: str, from_version: str | None, to_version: str, by: str, why: str) -> Move:
    """Add a move to the history (the alias has been moved already). Call it holding the
    registry lock (`lease.held(name)`), which numbers moves one at a time across processes."""
    history = moves(name)
    move = Move(
        history[-1].number + 1 if history else 1,
        datetime.now(UTC).isoformat(timespec="seconds"),
        from_version,
        str(to_version),
        by,
        why,
    )
    client = MlflowClient()
    payload = {"when": move.when, "from": move.from_version, "to": move.to_version, "by": by, "why": why}
    client.set_registered_model_tag(name, f"{PREFIX}{move.number:04d}", json.dumps(payload))
    client.set_model_version_tag(name, move.to_version, "champion_since", move.when)
    client.set_model_version_tag(name, move.to_version, "champion_reason", f"by {by}: {why}")
    return move


def promote(name: str, version: str, why: str) -> Move:
    """Make `version` the champion by hand, recorded with `why`."""
    if not why.strip():
        raise UserError("promote: say why with --reason TEXT (it is recorded in the registry)")
    if versions.resolve(f"{name}/{version}")[1] is None:
        raise UserError(f"promote: {name} has no version {version}; `transferops history` lists them")
    with lease.held(name):
        current = versions.champion_version(name)
        if current == str(version):
            raise UserError(f"promote: v{version} is already the champion of {name}")
        versions.set_aliases(name, str(version), [versions.CHAMPION])
        return record(name, current, str(version), "hand", why)


def rollback(name: str, why: str) -> Move:
    """Move the champion back to the one it replaced when it was promoted (by the gate or by
    hand); rolling back again walks further back along those promotions."""
    with lease.held(name):
        current = versions.champion_version(name)
        if current is None:
            raise UserError(f"rollback: {name} has no champion")
        promoted = [m for m in moves(name) if m.to_version == current and m.by != "rollback"]
        previous = promoted[-1].from_version if promoted else None
        if previous is None:
            raise UserError(
                f"rollback: v{current} replaced no earlier champion of {name}: nothing to go back to"
            )
        versions.set_aliases(name, previous, [versions.CHAMPION])
        return record(name, current, previous, "rollback", why or f"rolled back from v{current}")


def model_status(name: str) -> dict[str, Any]:
    """Champion and challenger of a registered model: version, metrics, lineage."""
    client = MlflowClient()
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        return {"model": name, "registered": False, "aliases": {}}
    out: dict[str, Any] = {"model": name, "registered": True, "aliases": {}}
    for alias in (versions.CHAMPION, versions.CHALLENGER):
        if alias not in registered.aliases:
            continue
        mv = client.get_model_version_by_alias(name, alias)
        metrics = {k: float(v) for k, v in mv.tags.items() if k.startswith("test_")}
        out["aliases"][alias] = {
            "version": str(mv.version),
            "run_id": mv.run_id,
            "created": pd.Timestamp(mv.creation_timestamp, unit="ms").isoformat(),
            "data_version": mv.tags.get("data_version"),
            "git_commit": mv.tags.get("git_commit"),
            "backbone": mv.tags.get("backbone"),
            "metrics": metrics,
            "intervals": {k[3:]: json.loads(v) for k, v in mv.tags.items() if k.startswith("ci_test_")},
            "champion_reason": mv.tags.get("champion_reason"),
            "runtime": mv.tags.get("serve.runtime", "keras"),  # what it answers through when served
        }
    return out
