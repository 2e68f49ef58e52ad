"""Lineage: which code and which data a run came from.

The data version is DVC's own directory hash (`<md5>.dir`), computed from the manifest's
per-file md5s exactly as `dvc add` computes it, so a run on a folder tracked by DVC carries
the hash in its `.dvc` file, and a run on an untracked folder still gets a stable version.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from functools import cache
from pathlib import Path

import pandas as pd
import yaml


def dvc_dir_hash(manifest: pd.DataFrame) -> str:
    """DVC 3's hash of a directory: md5 of the JSON list of {md5, relpath} sorted by path."""
    entries = sorted(
        ({"md5": md5, "relpath": path} for path, md5 in zip(manifest["path"], manifest["md5"], strict=False)),
        key=lambda e: e["relpath"],
    )
    payload = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(payload, usedforsecurity=False).hexdigest() + ".dir"


def dvc_file_hash(data_dir: Path | str) -> str | None:
    """The hash recorded in `<data_dir>.dvc`, or None when the folder is not tracked by DVC."""
    dvc_file = Path(str(data_dir).rstrip("/") + ".dvc")
    if not dvc_file.exists():
        return None
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
    return outs[0].get("md5")


def data_lineage(data_dir: Path | str, manifest: pd.DataFrame) -> dict[str, str]:
    """Tags describing the data: its version and whether DVC's record matches it. A staged
    table (tasks/data/tables.py) is the table: its md5, its `.dvc` file, its path."""
    from tasks.data.tables import source_of

    table = source_of(data_dir)
    if table is not None:
        version, data_dir = table["md5"], table["table"]
    else:
        version = dvc_dir_hash(manifest)
    recorded = dvc_file_hash(data_dir)
    if recorded is None:
        state = "untracked"
    elif recorded == version:
        state = "tracked"
    else:
        state = "modified since dvc add"
    return {"data_version": version, "data_dvc_state": state, "data_path": str(data_dir)}


def git_commit(root: Path | str) -> str:
    """The code version: the commit hash, with '-dirty' when tracked files have changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def digest(value: object) -> str:
    """A short stable hash of JSON-able `value` (dict keys sorted)."""
    payload = json.dumps(value, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def frame_hash(frame: pd.DataFrame) -> str:
    """A short hash of a data frame's columns and values (not its index)."""
    rows = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashlib.sha256(json.dumps(list(frame.columns)).encode() + rows.tobytes()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    """sha256 of a file, or "missing"."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "missing"


CODE_ROOT = Path(__file__).resolve().parents[2]  # where transferops and its lock file live


# The instruction sets oneDNN (and XLA) choose kernels by: two CPUs that differ in them may
# compute the same model to different last bits, so "bit for bit" holds per CPU kind.
ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve",
)  # fmt: skip


@cache
def cpu_kind() -> str:
    """`<model name> [<ISA flags that matter>]`, from /proc/cpuinfo (Linux), else the machine."""
    import platform

    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "cpu model") and not model:
                model = " ".join(value.split())
            elif key in ("flags", "features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    isa = " ".join(f for f in ISA_FLAGS if f in flags)
    return f"{model or platform.processor() or platform.machine()} [{isa}]"


def installed_transferops() -> str:
    """The installed transferops: its version, and whether this code runs from a source tree (an
    editable install or a checkout) rather than an installed copy. An upgrade changes it, so
    every cached result is recomputed even where a module moved."""
    import sysconfig
    from importlib import metadata

    try:
        version = metadata.version("transferops")
    except metadata.PackageNotFoundError:
        version = "not installed"
    installed = Path(sysconfig.get_paths()["purelib"]).resolve()
    editable = not Path(__file__).resolve().is_relative_to(installed)
    return f"{version} ({'editable' if editable else 'installed'})"


def environment(code_root: Path = CODE_ROOT) -> dict[str, str]:
    """What a version needs beyond code, data and params to be rebuilt: the installed
    transferops, the hash of the lock file it was installed from, and the versions of the interpreter and the libraries
    that compute."""
    import platform
    from importlib import metadata

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "absent"

    return {
        "transferops_version": installed_transferops(),
        "lock_sha256": file_sha256(code_root / "requirements.lock"),
        "python_version": platform.python_version(),
        "tensorflow_version": next(
            (v for v in (version("tensorflow-cpu"), version("tensorflow")) if v != "absent"), "absent"
        ),
        "keras_version": version("keras"),
        "platform": f"{platform.system()}-{platform.machine()}",
        "cpu": cpu_kind(),
    }
