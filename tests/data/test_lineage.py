import subprocess
import sys

import yaml

from tasks.data.ingest import scan
from tasks.data.lineage import data_lineage, dvc_dir_hash, git_commit
from tasks.modality.pixels import Images


def test_data_version_is_dvc_s_own_directory_hash(image_folder):
    """The hash computed from the manifest equals what a real `dvc add` records."""
    root = image_folder.parent
    (image_folder / ".DS_Store").write_bytes(b"hidden files are data to DVC too")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", image_folder.name], cwd=root, check=True)
    recorded = yaml.safe_load((root / "images.dvc").read_text())["outs"][0]["md5"]

    manifest = scan(image_folder, Images())
    assert dvc_dir_hash(manifest) == recorded
    assert data_lineage(image_folder, manifest)["data_dvc_state"] == "tracked"

    (image_folder / "ant" / "ant_0_000.png").unlink()
    changed = scan(image_folder, Images())
    assert dvc_dir_hash(changed) != recorded
    assert data_lineage(image_folder, changed)["data_dvc_state"] == "modified since dvc add"


def test_untracked_folder_still_gets_a_version(image_folder):
    lineage = data_lineage(image_folder, scan(image_folder, Images()))
    assert lineage["data_dvc_state"] == "untracked"
    assert lineage["data_version"].endswith(".dir")


def test_git_commit_marks_dirty_trees(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    assert git_commit(tmp_path) == "unknown"
    git("init", "-q")
    (tmp_path / "f.txt").write_text("a")
    git("add", "f.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    clean = git_commit(tmp_path)
    assert len(clean) == 40
    (tmp_path / "f.txt").write_text("b")
    assert git_commit(tmp_path) == clean + "-dirty"


def test_the_code_root_is_the_project_that_holds_the_lock_file():
    from tasks.data.lineage import CODE_ROOT, environment

    assert (CODE_ROOT / "requirements.lock").is_file() and (CODE_ROOT / "tasks").is_dir()
    assert len(environment()["lock_sha256"]) == 64
