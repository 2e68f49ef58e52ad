"""Reproduce a registered version: what it recorded, its data back from DVC, and the verdict.

A version carries what is needed to rebuild it (tags written by the register stage): params
(JSON), the data version (DVC's directory hash) and where the data was, the git commit, the lock
file's hash, the Python/TensorFlow/Keras versions, and the backbone it started from with that
backbone's own version. `transferops reproduce` restores the data, reruns the train flow with the
recorded params and the pinned backbone, registers nothing, and compares the metrics.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tasks import modality
from tasks.core.config import Params, registry_ref
from tasks.core.errors import UserError
from tasks.core.files import TABLE_FORMATS
from tasks.data import lineage, tables, versioning
from tasks.data.ingest import scan
from tasks.registry import versions

METRICS = ("accuracy", "macro_f1")


class ReproduceError(UserError, RuntimeError):
    """A version that cannot be reproduced here; the message says why and what to do."""


@dataclass
class Recorded:
    model: str
    version: str
    params: Params
    tags: dict[str, str]
    metrics: dict[str, float]
    warm_start_version: str | None = None  # set when the version was warm-started from another


def recorded(model: str, version: str) -> Recorded:
    """What version `version` of `model` recorded, with its params pinned to the exact backbone
    it started from (an alias like @pretrained may have moved since)."""
    tags = versions.version_tags(model, version)
    if not tags:
        raise ReproduceError(f"{model} v{version}: no such version in the registry")
    if "params" not in tags or "data_version" not in tags:
        raise ReproduceError(
            f"{model} v{version}: records no params or data version (made before lineage tags)"
        )
    params = Params.model_validate(json.loads(tags["params"]))
    metrics = {m: float(tags[f"test_{m}"]) for m in METRICS if f"test_{m}" in tags}
    backbone, pinned = tags.get("backbone", ""), tags.get("backbone_version", "")
    # the champion it started from, or that competed in its search and lost
    warm_start_version = tags.get("warm_start_version") or None
    if backbone.startswith(f"registry:{model}@champion") or backbone.startswith(f"registry:{model}/"):
        warm_start_version = pinned or warm_start_version
    elif backbone.startswith("registry:") and pinned:
        name = registry_ref(backbone.removeprefix("registry:"))[0]
        pin = {"uri": f"registry:{name}/{pinned}"}
        params = params.model_copy(
            update={
                section: params.section(section).model_copy(
                    update={
                        "candidates": tuple(
                            c.model_copy(update=pin) if c.uri == backbone else c
                            for c in params.section(section).candidates
                        )
                    }
                )
                for section in ("images", "texts")
            }
        )
    return Recorded(model, version, params, tags, metrics, warm_start_version)


def differences(record: Recorded, root: Path) -> list[str]:
    """What differs between then and now (code, lock file, library versions): warnings."""
    now = {"git_commit": lineage.git_commit(root), **lineage.environment()}
    out = []
    for key, current in now.items():
        then = record.tags.get(key)
        if then is not None and then != current:
            out.append(f"{key} was {then}, is {current}: results may differ")
    return out


def restore_data(record: Recorded, root: Path, scratch: Path) -> Path:
    """The version's data: its original folder when that still hashes to the recorded
    version, else a copy checked out by DVC (from the cache, or pulled from the remote)."""
    data_version = record.tags["data_version"]
    original = Path(record.tags.get("data_path", ""))
    if original.suffix.lower() in TABLE_FORMATS:  # a table (maybe gone): its md5, restored as a file
        if original.is_file() and tables.file_md5(original) == data_version:
            return tables.data_folder(original, root, record.params)
        restored = scratch / f"data{original.suffix.lower()}"
    else:
        found = modality.from_params(record.params, original)
        if original.is_dir() and lineage.dvc_dir_hash(scan(original, found)) == data_version:
            return original
        restored = scratch / "data"
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        versioning.restore(root, data_version, restored)
    except versioning.DvcError as exc:
        raise ReproduceError(
            f"data version {data_version} of {record.model} v{record.version} is not at {original} "
            f"and DVC could not restore it from its cache or remote ({exc}): was the folder "
            "`dvc add`-ed and pushed?"
        ) from None
    return tables.data_folder(restored, root, record.params)


def remove_scratch(scratch: Path) -> None:
    shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class Reproduction:
    """Recorded and new test metrics of one version, side by side."""

    model: str
    version: str
    recorded: dict[str, float]
    new: dict[str, float]
    tolerance: float
    warnings: list[str] = field(default_factory=list)
    cpu: tuple[str, str] | None = None  # (recorded, here) when the CPU kinds differ

    @property
    def matches(self) -> bool:
        return all(abs(self.new.get(m, float("nan")) - v) <= self.tolerance for m, v in self.recorded.items())


def compare(record: Recorded, new: dict[str, float], tolerance: float, warnings: list[str]) -> Reproduction:
    then, here = record.tags.get("cpu"), lineage.cpu_kind()
    cpu = (then, here) if then is not None and then != here else None
    return Reproduction(record.model, record.version, record.metrics, dict(new), tolerance, warnings, cpu)
