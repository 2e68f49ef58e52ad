"""DVC: put data folders under version control, push them to a remote, bring a version back.

Every DVC command runs through `run`: its output is kept, and a failure raises `DvcError`
with DVC's own reason (its `ERROR:` lines), never a bare "failed".
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tasks.core.errors import UserError


class DvcError(UserError, RuntimeError):
    """A DVC command failed; the message carries DVC's own reason."""


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The DVC command line of this environment in `root`, its output captured."""
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)


def reason(done: subprocess.CompletedProcess[str]) -> str:
    """Why a DVC command failed, in DVC's words, on one line: what it printed from its first
    `WARNING:` or `ERROR:` on (DVC names the cause and the missing files there, over several
    lines), else its last line of output."""
    lines = [line.strip() for line in f"{done.stdout}\n{done.stderr}".splitlines() if line.strip()]
    said = next((i for i, line in enumerate(lines) if line.startswith(("ERROR:", "WARNING:"))), None)
    if said is None:
        return lines[-1] if lines else f"exit status {done.returncode}"
    return " ".join(line for line in lines[said:] if not line.startswith("<http"))


def dvc(root: Path, *args: str) -> str:
    """Run DVC in `root` and return its output; raise `DvcError` with DVC's reason on failure."""
    done = run(root, *args)
    if done.returncode != 0:
        raise DvcError(f"dvc {' '.join(args)} failed in {root}: {reason(done)}")
    return done.stdout


def track(root: Path, folders: list[Path], default_remote: Path) -> None:
    """`dvc init` if needed, a local default remote if none, `dvc add` the folders, `dvc push`."""
    if not (root / ".dvc").is_dir():
        dvc(root, "init", *([] if (root / ".git").exists() else ["--no-scm"]))
    if not dvc(root, "remote", "list").strip():
        default_remote.mkdir(parents=True, exist_ok=True)
        # A relative path (DVC stores it relative to .dvc/), so the config works in any clone.
        dvc(root, "remote", "add", "--default", "local", os.path.relpath(default_remote, root))
    dvc(root, "add", *[str(f.relative_to(root)) for f in folders])
    dvc(root, "push")


def restore(root: Path, data_version: str, target: Path) -> None:
    """Check out DVC version `data_version` (a folder's `<md5>.dir`, or a file's `<md5>`) of
    project `root` into `target` (inside `root`): from the local cache, else pulled from the
    remote.

    DVC needs a pointer (`.dvc` file) for that, and refuses one in a git-ignored folder (such as
    `.transferops/`) in a git project. So the pointer lies in the project root, only while DVC
    runs; the folder it names may be git-ignored, and is. Works alike with `--no-scm`."""
    out = target.resolve().relative_to(root.resolve())
    pointer = root / f".transferops-restore-{target.parent.name}.dvc"
    pointer.write_text(yaml.safe_dump({"outs": [{"md5": data_version, "hash": "md5", "path": str(out)}]}))
    try:
        if run(root, "checkout", pointer.name).returncode != 0:  # not (all) in the local cache
            dvc(root, "pull", pointer.name)
    finally:  # the data stays; the pointer must not join the project's DVC files
        pointer.unlink(missing_ok=True)
