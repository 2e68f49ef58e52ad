"""The same inputs give the same model, and a registered version can be rebuilt.

Two projects with the same data and params each run the real pretrain and train flows; the
backbones and classifiers must be identical to the bit, and so must the metrics. Then
`transferops reproduce` rebuilds a version from what it recorded, with its data restored by DVC
after the folder changed."""

from __future__ import annotations

import json
import shutil
import subprocess

import mlflow
import numpy as np
import pytest
from conftest import clear_mlflow_env, dvc, make_image_folder, sets, use_store
from mlflow import MlflowClient

from flows.cli import main
from tasks.data import versioning
from tasks.registry.versions import load_pyfunc

pytestmark = pytest.mark.slow

MODEL = "transferops-classifier"
FAST = sets(
    {
        # the stand-in and a Keras Application, both at 32 px (the built-in default adds Lite0 at 224)
        "images.candidates": "[{uri: 'registry:transferops-backbone@pretrained'},"
        " {uri: 'keras:MobileNetV3Small', weights: none, size: 32}]",
        "pretrain.epochs": 3,
        "pretrain.width": 8,
        "pretrain.batch_size": 16,
        "finetune.head_epochs": 10,
        "finetune.finetune_epochs": 2,
        "finetune.batch_size": 16,
        "finetune.head_learning_rate": 0.01,
        "search.enabled": "false",
        "register.serve_runtime": "keras",  # the ONNX check is tested end to end, not here
    }
)


def weights(root, uri: str) -> list[np.ndarray]:
    use_store(root)
    if uri.startswith("models:/transferops-backbone"):
        return mlflow.keras.load_model(uri).get_weights()
    return load_pyfunc(uri).unwrap_python_model().model.get_weights()


@pytest.fixture(scope="module")
def twins(tmp_path_factory, prefect_harness):
    """Two projects, same data and params, each versioning its data with DVC: the first
    without git (`--no-scm`), the second a git repository pushing to a DVC remote."""
    roots = []
    with pytest.MonkeyPatch.context() as mp:
        clear_mlflow_env(mp)
        for name in ("a", "b"):
            root = tmp_path_factory.mktemp(name)
            make_image_folder(root / "data" / "source", ["ant", "bee", "cat"], per_class=40, seed=1)
            make_image_folder(root / "data" / "raw", ["dog", "eel", "fox"], per_class=30, seed=2)
            if name == "a":
                dvc(root, "init", "--no-scm", "-q")
                dvc(root, "add", "-q", "data/raw")
            else:  # as `make demo` leaves a project: git, .transferops/ git-ignored
                subprocess.run(["git", "init", "-q"], cwd=root, check=True)
                (root / ".gitignore").write_text("/.transferops/\n/mlflow/\n/reports/\n/.dvc-remote/\n")
                versioning.track(root, [root / "data" / "raw"], root / ".dvc-remote")
            args = ["--root", str(root), *FAST]
            assert main([*args, "pretrain"]) == 0
            assert main([*args, "train"]) == 0
            roots.append(root)
        yield roots


def test_pretrain_and_train_repeat_bit_for_bit(twins):
    a, b = twins
    for uri in ("models:/transferops-backbone@pretrained", f"models:/{MODEL}@champion"):
        wa, wb = weights(a, uri), weights(b, uri)
        assert len(wa) == len(wb) > 0
        assert all(np.array_equal(x, y) for x, y in zip(wa, wb, strict=True)), uri
    for report in ("pretrain.json", "train.json"):
        sa = json.loads((a / "reports" / report).read_text())
        sb = json.loads((b / "reports" / report).read_text())
        assert sa["test"] == sb["test"] and sa["logme"] == sb["logme"], report


def test_a_train_on_two_dask_workers_gets_the_model_in_process_gets(twins, tmp_path_factory):
    """runner.kind: dask, a local cluster of 2 worker processes (1 thread each): the candidates
    are scored on the workers (features written to the project's cache, the stand-in loaded
    from the project's registry there) and the flow goes on in its process."""
    root = tmp_path_factory.mktemp("dask")
    make_image_folder(root / "data" / "source", ["ant", "bee", "cat"], per_class=40, seed=1)
    make_image_folder(root / "data" / "raw", ["dog", "eel", "fox"], per_class=30, seed=2)
    args = ["--root", str(root), *FAST]
    assert main([*args, "pretrain"]) == 0
    assert main([*args, *sets({"runner.kind": "dask", "runner.workers": 2}), "train"]) == 0
    local, dask = (json.loads((r / "reports" / "train.json").read_text()) for r in (twins[1], root))
    assert dask["backbone"] == local["backbone"]
    assert dask["logme"].keys() == local["logme"].keys()
    # one thread per worker against two here: the features agree to float32 rounding, not bits
    assert all(abs(dask["logme"][k] - v) < 1e-5 for k, v in local["logme"].items())
    assert dask["test"] == local["test"]
    uri = f"models:/{MODEL}@champion"
    assert all(
        np.allclose(x, y, atol=1e-4) for x, y in zip(weights(twins[1], uri), weights(root, uri), strict=True)
    )
    assert not list((root / ".transferops" / "runner").iterdir())  # the shared-folder check cleaned up


def test_a_version_records_what_rebuilds_it(twins):
    root = twins[0]
    tags = use_store(root).get_model_version(MODEL, "1").tags
    assert tags["data_dvc_state"] == "tracked" and tags["deterministic"] == "true"
    assert len(tags["lock_sha256"]) == 64
    assert tags["keras_version"] and tags["tensorflow_version"] and tags["python_version"]
    assert tags["backbone"] == "registry:transferops-backbone@pretrained"
    assert tags["backbone_version"] == "1"
    backbone = MlflowClient().get_model_version("transferops-backbone", "1").tags
    assert tags["backbone_data_version"] == backbone["data_version"] != ""
    assert json.loads(tags["params"])["pretrain"]["epochs"] == 3


def test_reproduce_restores_the_data_with_dvc_and_matches(twins, capsys):
    root = twins[0]
    # the folder moves on: the version's data now lives only in DVC's cache
    make_image_folder(root / "data" / "raw", ["dog", "eel", "fox"], per_class=3, seed=9)
    capsys.readouterr()
    assert main(["--root", str(root), "reproduce", "1"]) == 0
    out = capsys.readouterr().out
    assert "verdict       match (tolerance 0)" in out
    report = json.loads((root / "reports" / "reproduce.json").read_text())
    assert report["reproduction"]["matches"] is True
    assert report["reproduction"]["new"] == report["reproduction"]["recorded"]
    assert report["registered"] is None  # a reproduction registers nothing
    assert not (root / ".transferops" / "reproduce").exists() or not any(
        (root / ".transferops" / "reproduce").iterdir()
    )
    assert len(use_store(root).search_model_versions(f"name='{MODEL}'")) == 1


def test_reproduce_in_a_git_project_brings_back_an_older_data_version_from_the_remote(twins, capsys):
    root = twins[1]
    make_image_folder(root / "data" / "raw", ["dog", "eel", "fox"], per_class=3, seed=9)  # new data
    versioning.track(root, [root / "data" / "raw"], root / ".dvc-remote")
    assert main(["--root", str(root), *FAST, "train"]) == 0
    assert len(use_store(root).search_model_versions(f"name='{MODEL}'")) == 2  # v2: the new data
    shutil.rmtree(root / ".dvc" / "cache")  # v1's data is now only in the remote
    capsys.readouterr()
    assert main(["--root", str(root), "reproduce", "1"]) == 0
    assert "verdict       match (tolerance 0)" in capsys.readouterr().out
    report = json.loads((root / "reports" / "reproduce.json").read_text())
    assert report["reproduction"]["new"] == report["reproduction"]["recorded"]
    assert not list(root.glob(".transferops-restore-*"))  # DVC's pointer is gone
    status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True)
    assert ".transferops" not in status.stdout


def test_reproduce_fails_when_the_metrics_differ(twins, capsys):
    root = twins[1]
    use_store(root).set_model_version_tag(MODEL, "1", "test_accuracy", "0.01")  # a record that lies
    assert main(["--root", str(root), "reproduce", "1"]) == 1
    assert "verdict       DIFFERENT (tolerance 0)" in capsys.readouterr().out


def test_reproduce_names_a_version_that_does_not_exist(twins, capsys):
    assert main(["--root", str(twins[1]), "reproduce", "7"]) == 2
    assert "transferops-classifier v7: no such version in the registry" in capsys.readouterr().err
