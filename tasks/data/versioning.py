"""DVC: put data folders under version control and push them to a remote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def dvc(root: Path, *args: str) -> str:
    """Run the DVC command line of this environment in `root`; raise with its output on failure."""
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed in {root}:\n{result.stdout}{result.stderr}")
    return result.stdout


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
