"""Shared fixtures: tiny image folders made in the test, Prefect's test harness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from bench.servers import free_port, start_mlflow_server, wait_until_up  # noqa: F401 (tests import them from here)
from flows.runtime import apply_env_defaults

apply_env_defaults()


def pattern_image(label: int, rng: np.random.Generator, size: int = 24) -> np.ndarray:
    """A learnable image: class k has a bar at a class-specific height, bright in colour
    channel k % 3 (so it survives global pooling), on noise."""
    image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    row = 2 + (label * 5) % (size - 4)
    image[row : row + 3, :, label % 3] = 220
    return image


def write_split(root: Path, x: np.ndarray, y: np.ndarray):
    """Images as PNG files under `root` and the Split that names them: what the pipeline
    streams (PNG is lossless, so the pixels read back are `x`)."""
    from tasks.data.datasets import Split

    files = []
    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        relative = f"{int(label)}/{i:05d}.png"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / relative)
        files.append(relative)
    return Split(root, files, np.asarray(y, dtype=np.int64))


@pytest.fixture
def on_disk(tmp_path):
    """`on_disk(x, y)`: a Split of those images, written under this test's tmp_path."""
    made = []

    def write(x: np.ndarray, y: np.ndarray):
        made.append(None)
        return write_split(tmp_path / f"split{len(made)}", x, y)

    return write


def make_image_folder(root: Path, classes: list[str], per_class: int, seed: int = 0, size: int = 24) -> Path:
    """Write `per_class` PNGs for each class under root/<class>/."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(pattern_image(k, rng, size)).save(folder / f"{name}_{seed}_{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images", ["ant", "bee", "cat"], per_class=12)


@pytest.fixture(scope="session", autouse=True)
def stop_prefect_temporary_servers():
    """A flow run in a test's process may start Prefect's temporary server, which Prefect stops
    at exit, logging to a stream pytest has closed by then (a "Logging error" traceback after
    the results): stopped here instead, while the stream is open."""
    yield
    from prefect.server.api.server import SubprocessASGIServer

    for server in list(SubprocessASGIServer._instances.values()):
        server.stop()


@pytest.fixture(scope="session")
def prefect_harness():
    """Flows run against a temporary Prefect server and database, not the user's."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def clear_mlflow_env(mp: pytest.MonkeyPatch) -> None:
    """No MLflow URI from the environment: MLflow exports every URI a test sets (tracking and
    registry) to os.environ, where the next test would take it for the user's."""
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("MLFLOW_REGISTRY_URI", raising=False)


@pytest.fixture(autouse=True)
def _no_mlflow_uri_from_an_earlier_test(monkeypatch):
    clear_mlflow_env(monkeypatch)


def sets(values: dict[str, object]) -> list[str]:
    """CLI overrides: {"finetune.head_epochs": 3} -> ["--set", "finetune.head_epochs=3"]."""
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def checkpointed_epochs(root: Path) -> int:
    """Head epochs the finetune checkpoint of the project at `root` holds (0 while there is none)."""
    for metadata in (root / ".transferops" / "checkpoints").glob("finetune-*/head/training_metadata.json"):
        try:
            return int(json.loads(metadata.read_text())["epoch"])
        except (OSError, ValueError, KeyError):
            return 0
    return 0


def wait_for_checkpoint(process: subprocess.Popen, root: Path, epochs: int, timeout: float = 300) -> None:
    """Until the run in `process` has checkpointed `epochs` head epochs (it must still be running)."""
    import time

    deadline = time.time() + timeout
    while checkpointed_epochs(root) < epochs:
        assert process.poll() is None, "the run ended before it reached the checkpoint"
        assert time.time() < deadline, "finetune never started"
        time.sleep(0.2)


def isolated_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a `transferops` subprocess with its own Prefect home, on the project's
    own stores: no tracking server or Prefect API from the caller's environment."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PREFECT_API_URL"):
        env.pop(variable, None)
    return env


def dvc(root: Path, *args: str) -> None:
    """The DVC command line of this environment, in `root`."""
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, check=True, capture_output=True)


def use_store(root: Path) -> mlflow.MlflowClient:
    """The project's tracking store and registry (both: the registry URI does not follow)."""
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    mlflow.set_registry_uri(mlflow.get_tracking_uri())
    return mlflow.MlflowClient()


# The longest files (`--durations`: ten retrain rounds with gc, the crash-recovery runs, the
# tracking-server outage and reuse runs, 7-10 minutes each on 2 busy cores): they start first.
LONGEST_FILES = ("test_gc.py", "test_crash_recovery.py", "test_reuse.py", "test_texts_end_to_end.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with slow tests (the real end-to-end flows) first, each file's tests kept together
    and in order: spread over xdist workers (`scripts/test.sh`), the longest files start first
    and the short ones fill in around them, instead of one long file starting last."""
    slow = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: (item.path.name not in LONGEST_FILES, item.path not in slow))


@pytest.fixture(scope="module")
def dask(tmp_path_factory):
    """A real Dask LocalCluster of 2 worker processes, 1 thread each, for a test module."""
    from tasks.core import runner

    on = runner.DaskRunner(None, workers=2, threads_per_worker=1, shared=tmp_path_factory.mktemp("shared"))
    on.client()
    yield on
    on.close()
