"""DVC brings back an older version of a data folder into a git-ignored scratch folder, in a git
project and in a `--no-scm` one, from the local cache or else the remote; when it cannot, the
error carries DVC's own reason."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tasks.data import versioning


def project(root: Path, git: bool) -> str:
    """A project whose data/raw had version 1 (returned: its DVC hash), then gained a file;
    both versions pushed to a local remote."""
    root.mkdir()
    if git:
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        (root / ".gitignore").write_text("/.transferops/\n")  # as this project's own .gitignore
    raw = root / "data" / "raw" / "cat"
    raw.mkdir(parents=True)
    (raw / "1.txt").write_text("one")
    (raw / "2.txt").write_text("two")
    versioning.track(root, [root / "data" / "raw"], root / ".dvc-remote")
    first = yaml.safe_load((root / "data" / "raw.dvc").read_text())["outs"][0]["md5"]
    shutil.copytree(root / "data" / "raw", root / "expected")
    (raw / "3.txt").write_text("three")
    (raw / "1.txt").write_text("changed")
    versioning.track(root, [root / "data" / "raw"], root / ".dvc-remote")
    return first


@pytest.mark.parametrize("git", [True, False], ids=["git", "no-scm"])
def test_an_older_version_comes_back_from_the_cache_else_the_remote(tmp_path, git):
    root = tmp_path / "p"
    first = project(root, git)
    target = root / ".transferops" / "reproduce" / "m-v1" / "data"
    versioning.restore(root, first, target)  # from the local cache
    assert not filecmp.dircmp(target, root / "expected").diff_files
    assert sorted(p.name for p in (target / "cat").iterdir()) == ["1.txt", "2.txt"]
    assert (target / "cat" / "1.txt").read_text() == "one"

    shutil.rmtree(target.parent)
    shutil.rmtree(root / ".dvc" / "cache")  # only the remote holds it now
    versioning.restore(root, first, target)
    assert (target / "cat" / "1.txt").read_text() == "one"
    assert not list(root.glob(".transferops-restore-*")), "the pointer was left in the project"
    if git:
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True)
        assert ".transferops" not in status.stdout


def test_a_version_nowhere_fails_with_dvcs_reason(tmp_path):
    root = tmp_path / "p"
    project(root, git=True)
    shutil.rmtree(root / ".dvc" / "cache")
    shutil.rmtree(root / ".dvc-remote")
    missing = "0123456789abcdef0123456789abcdef.dir"
    with pytest.raises(versioning.DvcError) as failed:
        versioning.restore(root, missing, root / ".transferops" / "reproduce" / "m-v1" / "data")
    message = str(failed.value)
    assert message.startswith("dvc pull .transferops-restore-m-v1.dvc failed in ")
    assert len(message.splitlines()) == 1
    assert f"Missing cache files: md5: {missing}" in message  # DVC's own words
    assert "ERROR: failed to pull data from the cloud" in message
    assert not list(root.glob(".transferops-restore-*"))


def test_the_reason_is_dvcs_error_line():
    done = subprocess.CompletedProcess(
        ["dvc"], 1, stdout="Collecting\n", stderr="ERROR: bad DVC file name 'x.dvc' is git-ignored.\n"
    )
    assert versioning.reason(done) == "ERROR: bad DVC file name 'x.dvc' is git-ignored."
    quiet = subprocess.CompletedProcess(["dvc"], 255, stdout="", stderr="")
    assert versioning.reason(quiet) == "exit status 255"
