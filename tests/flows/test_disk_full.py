"""A full disk mid-run: one line that names the disk and the file, exit 1, no partial result
file, and the champion does not move. The disk is a real one: a tiny tmpfs mounted over the
project's results folder (needs root, as on the CI machine; skipped elsewhere)."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest
from conftest import make_image_folder
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

CANDIDATE = ["--set", "images.candidates=[{uri: 'keras:MobileNetV3Small', weights: none, size: 32}]"]
FAST = [
    "--set",
    "finetune.head_epochs=2",
    "--set",
    "finetune.finetune_epochs=1",
    "--set",
    "search.enabled=false",
]


def train(root, env, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "flows.cli", "--root", str(root), *CANDIDATE, *FAST, *extra, "train"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KB tmpfs mounted at a folder, unmounted afterwards."""
    mounted = []

    def mount(folder):
        folder.mkdir(parents=True, exist_ok=True)
        command = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)]
        done = subprocess.run(command, capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(folder)

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_is_one_line_and_the_champion_stays(tmp_path, small_disk):
    root = tmp_path / "project"
    make_image_folder(root / "data" / "raw", ["dog", "eel"], per_class=15)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PREFECT_API_URL"):
        env.pop(variable, None)
    assert train(root, env).returncode == 0  # champion v1

    results = root / ".transferops" / "checkpoints"
    small_disk(results)  # the next run's checkpoints land on a 64 KB disk: the first one does not fit
    done = train(root, env, "--set", "finetune.seed=7")
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1, done.stderr[-3000:]
    assert last.startswith(f"transferops: disk full on {results} ("), last
    assert f"while writing {results}/" in last  # (above it, h5py prints what it could not free)

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    mlflow.set_registry_uri(mlflow.get_tracking_uri())
    client = MlflowClient()
    assert [str(v.version) for v in client.search_model_versions("name = 'transferops-classifier'")] == ["1"]
    assert str(client.get_model_version_by_alias("transferops-classifier", "champion").version) == "1"
