"""What retention deletes on disk, in the project: the caches under `.transferops/` that no kept
run used, Data Docs beyond the last few validations, the exports of deleted versions, folders
`transferops data --force` set aside, and the DVC cache entries that no commit, no workspace
file and no kept version needs.

Every path comes from the project's own layout (never from a tag or a client), and nothing
outside the project's `.transferops/` or the data folders' parents is touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tasks.core.config import RetentionParams
from tasks.data import versioning

WORK = ".transferops"
KEEP_POINTERS = ".transferops-keep"  # DVC pointers of kept data versions, only while `dvc gc` runs


@dataclass(frozen=True)
class Doomed:
    """One file or folder retention deletes."""

    kind: str  # cached result, checkpoint, Data Docs, TensorBoard, features, reproduce scratch, export,
    # old data folder
    path: Path
    size: int  # bytes


def size_of(path: Path) -> int:
    """Bytes under `path` (files only, links not followed)."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    total = 0
    for folder, _, names in os.walk(path):
        total += sum((Path(folder) / n).lstat().st_size for n in names)
    return total


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.is_dir() else []


def doomed(
    root: Path,
    retention: RetentionParams,
    result_keys: set[str],
    features_since_s: float | None,
    data_folders: list[Path],
    kept_data_paths: set[str],
    kept_versions: dict[str, set[str]] | None = None,
    kept_data_versions: frozenset[str] | set[str] = frozenset(),
) -> list[Doomed]:
    """What to delete under `root`, given the cached results the kept runs used (`result_keys`),
    the start of the oldest kept flow run (`features_since_s`: feature files not used since go),
    the data folders whose `*.old-*` siblings `data --force` left, and the versions kept of
    each model this project registers (`kept_versions`: the exports of the others go), and the
    data versions kept versions need (a table's staging is kept for its md5)."""
    work, now = root / WORK, time.time()
    min_age = retention.min_age_minutes * 60

    def old(path: Path) -> bool:
        """Written over `min_age_minutes` ago: a newer file may belong to a run in progress (of
        another model of this project: this one's run lock is held)."""
        return now - path.lstat().st_mtime > min_age

    prefixes = {k[:16] for k in result_keys}
    out: list[Doomed] = []

    def add(kind: str, path: Path) -> None:
        out.append(Doomed(kind, path, size_of(path)))

    for path in _entries(work / "results"):
        if path.name not in result_keys and old(path):
            add("cached result", path)
    for kind, sub in (("checkpoint", "checkpoints"), ("TensorBoard", "tensorboard")):
        for path in _entries(work / sub):  # <stage>-<key[:16]>
            if path.name.rpartition("-")[2] not in prefixes and old(path):
                add(kind, path)
    docs = sorted(_entries(work / "data_docs"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in docs[retention.keep_validations :]:  # MLflow keeps each validation's copy
        if old(path):
            add("Data Docs", path)
    if features_since_s is not None:
        for path in _entries(work / "features"):
            last_used = max(path.stat().st_atime, path.stat().st_mtime)  # a reuse sets the access time
            if last_used < features_since_s and old(path):
                add("features", path)
    for path in _entries(work / "tables"):  # <md5>-<columns>[.json]: tasks/data/tables.py
        if path.name[:32] not in kept_data_versions and old(path):
            add("staged table", path)
    for path in _entries(work / "reproduce"):
        if old(path):
            add("reproduce scratch", path)
    for model, versions in (kept_versions or {}).items():
        for path in _entries(work / "exports" / model):  # v<N>: `transferops export`
            if path.name.removeprefix("v") not in versions and old(path):
                add("export", path)
    kept = {str(Path(p).resolve()) for p in kept_data_paths}
    for folder in data_folders:
        for path in sorted(folder.parent.glob(f"{folder.name}.old-*")):
            if path.is_dir() and not path.is_symlink() and str(path.resolve()) not in kept:
                add("old data folder", path)
    return out


def delete(items: list[Doomed]) -> None:
    for item in items:
        if item.path.is_dir() and not item.path.is_symlink():
            shutil.rmtree(item.path, ignore_errors=True)
        else:
            item.path.unlink(missing_ok=True)


def dvc_gc(root: Path, data_versions: set[str], dry_run: bool) -> tuple[int, str | None]:
    """`dvc gc` of the project's cache (never a remote) keeping every commit's data (in a git
    repository), the workspace's, and each kept version's `data_versions`. Returns (objects
    removed or to remove, why it did not run or None)."""
    if not (root / ".dvc").is_dir():
        return 0, None
    pointers = root / KEEP_POINTERS
    if pointers.exists():
        return 0, f"{pointers} exists (another gc running, or left by one that died: delete it)"
    in_git = (root / ".git").exists()
    if in_git and _git_ignores(root, KEEP_POINTERS):
        return 0, f"{KEEP_POINTERS}/ is git-ignored here, so DVC would not see the kept versions' data"
    pointers.mkdir()
    try:
        for number, data_version in enumerate(sorted(data_versions)):
            out = {"md5": data_version, "hash": "md5", "path": f"data-{number}"}
            (pointers / f"data-{number}.dvc").write_text(yaml.safe_dump({"outs": [out]}))
        scope = ["--workspace", "--all-commits"] if in_git else ["--workspace"]
        done = versioning.run(root, "gc", *scope, "--force", *(["--dry"] if dry_run else []))
    finally:
        shutil.rmtree(pointers, ignore_errors=True)
    if done.returncode != 0:
        return 0, f"dvc gc failed: {versioning.reason(done)}"
    lines = done.stdout.splitlines()
    removed = sum(1 for line in lines if line.startswith("Removing "))
    said = [int(w[1]) for w in (line.split() for line in lines) if w[:1] == ["Removed"] and w[1].isdigit()]
    removed = max(removed, sum(said))
    return removed, None


def _git_ignores(root: Path, name: str) -> bool:
    probe = subprocess.run(["git", "check-ignore", "-q", f"{name}/x.dvc"], cwd=root, capture_output=True)
    return probe.returncode == 0
