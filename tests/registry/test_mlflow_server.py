"""The train flow against a real `mlflow server` on 127.0.0.1 (REST tracking, registry and
proxied artifacts), as a team would run it: the same code, only MLFLOW_TRACKING_URI differs."""

from __future__ import annotations

import mlflow
import pytest
from conftest import free_port, make_image_folder, start_mlflow_server

from flows.cli import main
from tasks.registry.serving import files_frame
from tasks.registry.versions import load_pyfunc

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    process = start_mlflow_server(tmp_path, port)
    yield f"http://127.0.0.1:{port}", tmp_path / "artifacts"
    process.terminate()
    process.wait(timeout=30)


def test_train_registers_through_a_tracking_server(tmp_path, mlflow_server, prefect_harness, monkeypatch):
    url, artifact_root = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    root = tmp_path / "project"
    make_image_folder(root / "data" / "raw", ["dog", "eel"], per_class=15)
    args = [
        "--root",
        str(root),
        "--set",
        "images.candidates=[{uri: 'keras:MobileNetV3Small', weights: none, size: 32}]",
        "--set",
        "finetune.head_epochs=2",
        "--set",
        "finetune.finetune_epochs=1",
        "--set",
        "search.enabled=false",
    ]
    assert main([*args, "train"]) == 0

    mlflow.set_tracking_uri(url)
    version = mlflow.MlflowClient().get_model_version_by_alias("transferops-classifier", "champion")
    assert version.tags["backbone"] == "keras:MobileNetV3Small"
    assert not (root / "mlflow").exists()  # nothing went to the local store
    assert list(artifact_root.rglob("MLmodel"))  # artifacts landed behind the server
    model = load_pyfunc("models:/transferops-classifier@champion")
    paths = [str(p) for p in sorted((root / "data" / "raw" / "dog").glob("*.png"))[:3]]
    out = model.predict(files_frame(paths))
    assert set(out["label"]) <= {"dog", "eel"} and len(out) == 3
