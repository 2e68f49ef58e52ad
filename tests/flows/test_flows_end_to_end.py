"""The real pipeline, end to end: Prefect flows (test harness), MLflow (throwaway store in a
temp folder), Great Expectations, TensorFlow. Tiny data made here; a few minutes on 2 cores."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import clear_mlflow_env, make_image_folder, sets
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.cli import main
from tasks.data.ingest import scan
from tasks.data.lineage import dvc_dir_hash
from tasks.modality.pixels import Images
from tasks.registry.serving import files_frame
from tasks.registry.versions import load_pyfunc

pytestmark = pytest.mark.slow

MODEL = "transferops-classifier"
FAST = sets(
    {
        # the stand-in and a Keras Application, both at 32 px (the built-in default adds Lite0 at 224)
        "images.candidates": "[{uri: 'registry:transferops-backbone@pretrained'},"
        " {uri: 'keras:MobileNetV3Small', weights: none, size: 32}]",
        "images.size": 32,
        "pretrain.epochs": 5,
        "pretrain.width": 8,
        "pretrain.batch_size": 16,
        "finetune.head_epochs": 30,
        "finetune.finetune_epochs": 2,
        "finetune.batch_size": 16,
        "finetune.head_learning_rate": 0.01,
        "search.enabled": "false",  # the fixed recipe; the search has its own test below
    }
)


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_harness):
    """pretrain + train once, through the CLI, in a fresh project folder."""
    root = tmp_path_factory.mktemp("project")
    make_image_folder(root / "data" / "source", ["ant", "bee", "cat"], per_class=60, seed=1)
    make_image_folder(root / "data" / "raw", ["dog", "eel", "fox"], per_class=40, seed=2)
    args = ["--root", str(root), *FAST]
    with pytest.MonkeyPatch.context() as mp:
        clear_mlflow_env(mp)
        # a system-metrics sample every second, not every 10 s: this tiny train run is short
        mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
        tmp = fresh_tmpdir(mp, root.parent / "tmp")
        assert main([*args, "pretrain"]) == 0
        # run by hand, a stage leaves the (committed) DVC metrics alone; under `dvc repro` it writes them
        assert not (root / "metrics").exists()
        mp.setenv("DVC_STAGE", "train")
        assert main([*args, "train"]) == 0
        assert list(tmp.iterdir()) == []  # nothing left in the temp folder (Data Docs, models)
        yield root, args


def fresh_tmpdir(mp: pytest.MonkeyPatch, folder: Path) -> Path:
    """Point TMPDIR (and `tempfile`) at an empty folder of the test's own."""
    folder.mkdir(exist_ok=True)
    mp.setenv("TMPDIR", str(folder))
    mp.setattr(tempfile, "tempdir", None)
    return folder


def client_for(root) -> MlflowClient:
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    mlflow.set_registry_uri(mlflow.get_tracking_uri())
    return MlflowClient()


def test_train_registers_a_champion_with_lineage(project):
    root, _ = project
    client = client_for(root)
    summary = json.loads((root / "reports" / "train.json").read_text())
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert str(version.version) == "1" == summary["registered"]["version"]
    assert str(client.get_model_version_by_alias(MODEL, "challenger").version) == "1"

    manifest = scan(root / "data" / "raw", Images())
    assert version.tags["data_version"] == dvc_dir_hash(manifest) == summary["data_version"]
    assert version.tags["data_dvc_state"] == "untracked"
    assert version.tags["git_commit"] == "unknown"  # the temp project is not a git repo
    # it answers through its ONNX export, checked on the same test images (register.serve_runtime)
    assert version.tags["serve.runtime"] == "onnx", version.tags["serve.runtime_reason"]
    assert float(version.tags["export.onnx.agreement"]) == 1.0
    assert version.tags["backbone"] == "registry:transferops-backbone@pretrained"
    assert json.loads(version.tags["params"])["finetune"]["head_epochs"] == 30

    # test metrics: computed (and logged) once, by the evaluate stage; the version carries them
    evaluate = client.search_runs(
        [client.get_run(summary["mlflow_run_id"]).info.experiment_id],
        f"tags.mlflow.parentRunId = '{summary['mlflow_run_id']}' and tags.stage = 'evaluate'",
    )[0]
    assert evaluate.data.metrics["test_accuracy"] == pytest.approx(summary["test"]["accuracy"])
    assert evaluate.data.metrics["test_accuracy"] > 0.6  # 3 classes: chance is 1/3
    assert float(version.tags["test_macro_f1"]) == pytest.approx(summary["test"]["macro_f1"], abs=1e-4)
    assert json.loads(version.tags["classes"]) == ["dog", "eel", "fox"]
    # the model card: the version's description in the registry, and an artifact of its run
    card = version.description
    assert card.startswith("# `transferops-classifier` v1\n")
    assert "**Promotion gate**: no champion yet" in card
    assert "| `dog` | " in card and "LogME on frozen features: `transferops-backbone_pretrained`" in card
    low, high = json.loads(version.tags["ci_test_macro_f1"])
    assert low <= summary["test"]["macro_f1"] <= high
    assert f"| macro_f1 | {summary['test']['macro_f1']:.4f} | [{low:.4f}, {high:.4f}] |" in card
    register_run = client.search_runs(
        [evaluate.info.experiment_id],
        f"tags.mlflow.parentRunId = '{summary['mlflow_run_id']}' and tags.stage = 'register'",
    )[0]
    assert "model_card.md" in {a.path for a in client.list_artifacts(register_run.info.run_id)}
    # the flow's run: a readable name, and the three splits as MLflow dataset inputs
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.info.run_name == f"train-{summary['data_version'][:8]}-transferops-backbone@pretrained"
    tags_of = [({t.key: t.value for t in i.tags}, i) for i in parent.inputs.dataset_inputs]
    by_context = {tags["mlflow.data.context"]: i for tags, i in tags_of}
    assert set(by_context) == {"train", "val", "test"}
    train_input = by_context["train"]
    assert train_input.dataset.name == "raw-train" and train_input.dataset.digest == summary["data_version"]
    counts = json.loads(next(t.value for t in train_input.tags if t.key == "class_counts"))
    assert sum(counts.values()) == summary["examples"]["train"]
    evaluated = {a.path for a in client.list_artifacts(evaluate.info.run_id)}
    assert {"reliability.png", "test_details.json", "confident_mistakes.json"} <= evaluated
    assert 0 <= evaluate.data.metrics["test_ece"] <= 1


def test_every_stage_has_a_nested_run_with_its_records(project):
    root, _ = project
    client = client_for(root)
    summary = json.loads((root / "reports" / "train.json").read_text())
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.data.tags["data_version"] == summary["data_version"]
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    stages = {r.data.tags["stage"]: r for r in children}
    order = ["validate", "split", "select", "finetune", "evaluate", "register"]
    assert set(stages) == set(order)
    assert list(summary["stage_seconds"]) == order  # timed by the wrappers, in the order they ran
    # params on the parent run only; test metrics on the evaluate run, and the headline (test
    # accuracy and macro-F1, the gate's verdict) on the parent too, where the runs table sorts
    assert parent.data.params["finetune.head_epochs"] == "30"
    assert not any(r.data.params for r in children)
    assert [s for s, r in stages.items() if "test_accuracy" in r.data.metrics] == ["evaluate"]
    assert parent.data.metrics["test_accuracy"] == stages["evaluate"].data.metrics["test_accuracy"]
    assert parent.data.metrics["test_macro_f1"] == summary["test"]["macro_f1"]
    assert (parent.data.tags["modality"], parent.data.tags["gate"]) == ("images", "promoted")

    select = stages["select"].data.metrics
    assert {"logme.transferops-backbone_pretrained", "logme.MobileNetV3Small"} <= set(select)
    # the pretrained backbone must transfer better than an untrained MobileNetV3
    assert select["logme.transferops-backbone_pretrained"] > select["logme.MobileNetV3Small"]

    history = client.get_metric_history(stages["finetune"].info.run_id, "head.val_loss")
    assert [m.step for m in history] == list(range(len(history))) and len(history) >= 2

    def artifacts(run, path=""):
        return {a.path for a in client.list_artifacts(run.info.run_id, path)}

    assert "data_docs/index.html" in artifacts(stages["validate"], "data_docs")
    assert "manifest.parquet" in artifacts(stages["validate"])
    assert {"confusion_matrix.png", "per_class_report.json"} <= artifacts(stages["evaluate"])


def child_run(client: MlflowClient, parent_id: str, stage: str):
    experiment = client.get_run(parent_id).info.experiment_id
    query = f"tags.mlflow.parentRunId = '{parent_id}' and tags.stage = '{stage}'"
    return client.search_runs([experiment], query)[0]


def test_the_run_is_published_where_each_dashboard_shows_it(project):
    """MLflow (linked version, description, system metrics), TensorBoard event files, Prefect
    artifacts and the DVC files of one train run, read back through each tool's own API."""
    from prefect.client.schemas.filters import ArtifactFilterFlowRunId
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _ = project
    client = client_for(root)
    summary = json.loads((root / "reports" / "train.json").read_text())
    run_id = summary["mlflow_run_id"]
    parent = client.get_run(run_id)
    # MLflow: the version links to the flow's run (its page lists it), the run has a description
    assert [(v.name, str(v.version)) for v in client.search_model_versions(f"run_id = '{run_id}'")] == [
        (MODEL, "1")
    ]
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith(f"# train: `{run_id}`") and "## LogME" in note
    assert "**Promotion gate**: no champion yet" in note and f"/#/models/{MODEL}/versions/1)" in note
    assert "| accuracy | " in note and "`dog`" in note
    docs = next(line for line in note.splitlines() if line.startswith("- [Data Docs"))
    assert Path(docs[docs.index("(file://") + 8 : -1]).is_file()
    assert parent.data.metrics["system/system_memory_usage_megabytes"] > 0
    # TensorBoard: event files of both phases, kept locally and logged with the finetune run
    finetune_run = child_run(client, run_id, "finetune")
    events = Path(finetune_run.data.tags["tensorboard_logdir"])
    epochs = {phase: len(h["loss"]) for phase, h in summary["curves"].items()}
    for phase, n in epochs.items():
        accumulator = EventAccumulator(str(events / phase / "validation"), {"tensors": 0}).Reload()
        assert [e.step for e in accumulator.Tensors("epoch_accuracy")] == list(range(n))
    logged = client.list_artifacts(finetune_run.info.run_id, "tensorboard/head/validation")
    assert any(Path(a.path).name.startswith("events.out.tfevents.") for a in logged)
    # Prefect: the flow run's summary and per-class table, from the API
    with get_client(sync_client=True) as prefect:
        flow_run = ArtifactFilterFlowRunId(any_=[parent.data.tags["prefect_flow_run_id"]])
        artifacts = {
            a.key: a for a in prefect.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=flow_run))
        }
    assert {"train-summary", "train-per-class"} <= set(artifacts)
    assert artifacts["train-summary"].data == note
    table = artifacts["train-per-class"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert [r["class"] for r in rows] == ["dog", "eel", "fox"]
    assert sum(r["support"] for r in rows) == summary["examples"]["test"]
    # DVC: numbers only, one curve row per epoch, one confusion row per test image
    numbers = json.loads((root / "metrics" / "train.json").read_text())
    assert numbers["test"]["accuracy"] == pytest.approx(summary["test"]["accuracy"], abs=1e-6)
    assert numbers["epochs"] == epochs

    def leaves(value):
        return [x for v in value.values() for x in leaves(v)] if isinstance(value, dict) else [value]

    assert all(isinstance(x, int | float) for x in leaves(numbers))
    history = (root / "metrics" / "train_history.csv").read_text().splitlines()
    assert history[0] == "step,phase,epoch,loss,accuracy,val_loss,val_accuracy"
    assert len(history) - 1 == sum(epochs.values())
    confusion = (root / "metrics" / "train_confusion.csv").read_text().splitlines()
    assert len(confusion) - 1 == summary["examples"]["test"]


def test_the_logged_model_carries_only_what_serving_needs(project):
    root, _ = project
    client_for(root)
    local = mlflow.artifacts.download_artifacts(f"models:/{MODEL}@champion")
    package = Path(local) / "code" / "tasks"
    code = sorted(str(p.relative_to(package)) for p in package.rglob("*.py"))
    assert code == [
        "__init__.py",
        "modality/__init__.py",
        "modality/images.py",
        "modality/text_rows.py",
        "modality/texts.py",
        "modality/token_layers.py",
        "registry/__init__.py",
        "registry/runtimes.py",
        "registry/serving.py",
    ]
    # and the checked ONNX export it answers through, beside the Keras model
    assert sorted(p.name for p in (Path(local) / "artifacts").iterdir()) == [
        "classifier.keras",
        "meta.json",
        "model.onnx",
    ]


def test_the_registered_model_serves_class_names_and_probabilities(project):
    root, _ = project
    client_for(root)
    model = load_pyfunc(f"models:/{MODEL}@champion")
    paths = sorted(str(p) for p in (root / "data" / "raw" / "eel").glob("*.png"))[:5]
    out = model.predict(files_frame(paths))
    assert list(out.columns) == ["label", "confidence", "p:dog", "p:eel", "p:fox", "error"]
    assert out["error"].isna().all()
    np.testing.assert_allclose(out[["p:dog", "p:eel", "p:fox"]].sum(axis=1), 1.0, rtol=1e-4)
    assert (out["label"] == "eel").mean() >= 0.6


def test_corrupt_image_stops_the_run_and_changes_nothing(project, capsys):
    root, args = project
    client = client_for(root)
    bad = root / "data" / "bad"
    shutil.copytree(root / "data" / "raw", bad)
    (bad / "fox" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    files_before = sorted(p.name for p in bad.rglob("*"))

    with pytest.raises(SystemExit) as stop:
        main([*args, "train", "--data", str(bad)])
    message = str(stop.value)
    assert f"data validation failed for {bad}" in message
    assert "fox/broken.png: not an image PIL can identify" in message

    client = client_for(root)
    assert [str(v.version) for v in client.search_model_versions(f"name='{MODEL}'")] == ["1"]
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert sorted(p.name for p in bad.rglob("*")) == files_before  # nothing deleted
    failed = client.search_runs(
        [client.get_experiment_by_name("transferops").experiment_id],
        "attributes.status = 'FAILED' and tags.flow = 'train'",
    )
    assert len(failed) == 1


def test_a_hostile_folder_stops_with_each_entry_named_and_no_traceback(project, tmp_path, capsys):
    root, args = project
    bad = tmp_path / "hostile"
    shutil.copytree(root / "data" / "raw", bad)
    shutil.copy(bad / "dog" / "dog_2_000.png", bad / "dog" / "<svg onload=alert(1)>.png")
    os.symlink("/etc/passwd", bad / "eel" / "passwd.png")
    os.mkfifo(bad / "eel" / "pipe.png")
    (bad / "fox" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    versions_before = len(client_for(root).search_model_versions(f"name='{MODEL}'"))
    with pytest.MonkeyPatch.context() as mp:
        tmp = fresh_tmpdir(mp, tmp_path / "tmp")
        with pytest.raises(SystemExit) as stop:
            main([*args, "train", "--data", str(bad)])
        assert list(tmp.iterdir()) == []  # a failed run leaves nothing behind either
    message = str(stop.value)
    assert message.startswith(f"transferops: train failed: data validation failed for {bad}: 3 problem(s)")
    assert "eel/passwd.png: symbolic link to outside the data folder: not read" in message
    assert "eel/pipe.png: a FIFO (named pipe): not read" in message
    assert "fox/broken.png: not an image PIL can identify" in message
    assert "svg" not in message  # a valid image with a hostile name is just an image
    assert "Traceback" not in capsys.readouterr().err
    assert len(client_for(root).search_model_versions(f"name='{MODEL}'")) == versions_before


def test_retrain_skips_unchanged_data_then_warm_starts_on_new_data(project):
    root, args = project
    assert main([*args, "retrain"]) == 0
    client = client_for(root)
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 1  # data unchanged: no run
    skipped = json.loads((root / "reports" / "retrain.json").read_text())
    assert skipped["skipped"] == "data unchanged since champion v1" and skipped["drift"] is None

    make_image_folder(root / "data" / "raw", ["dog", "eel", "fox"], per_class=6, seed=3)
    assert main([*args, "retrain", "--set", "finetune.finetune_epochs=1"]) == 0  # --set after the command
    client = client_for(root)
    new = client.get_model_version_by_alias(MODEL, "challenger")
    # the retrain ran with the CLI's params, not a fresh read of a params file
    retrain_run = client.get_run(new.tags["mlflow_run_id"])
    assert retrain_run.data.params["finetune.finetune_epochs"] == "1"
    assert json.loads(new.tags["params"])["finetune"]["finetune_epochs"] == 1
    finetune_stage = client.search_runs(
        [retrain_run.info.experiment_id],
        f"tags.mlflow.parentRunId = '{retrain_run.info.run_id}' and tags.stage = 'finetune'",
    )[0]
    assert finetune_stage.data.metrics["epochs.finetune"] == 1
    assert str(new.version) == "2"
    assert new.tags["backbone"].startswith("registry:transferops-classifier@champion")
    assert new.tags["data_version"] == dvc_dir_hash(scan(root / "data" / "raw", Images()))
    # the gate compared both on the same test set; the champion alias follows its decision
    summary = json.loads((root / "reports" / "retrain.json").read_text())
    champion_before = summary["champion_before"]
    assert champion_before["version"] == "1" and champion_before["metrics"] is not None
    promoted = summary["registered"]["promoted"]
    paired = json.loads(new.tags["gate"])  # the paired gate's numbers, on the same test images
    difference = summary["test"]["macro_f1"] - champion_before["metrics"]["macro_f1"]
    assert paired["delta"] == pytest.approx(difference)
    assert paired["ci_low"] <= paired["delta"] <= paired["ci_high"] and 0 < paired["p_value"] <= 1
    assert summary["registered"]["reason"].startswith("vs champion v1: macro_f1 ")
    assert summary["registered"]["reason"].endswith(": promoted" if promoted else ": kept")
    champion = str(client.get_model_version_by_alias(MODEL, "champion").version)
    assert champion == ("2" if promoted else "1")
    assert new.tags["promotion"] == summary["registered"]["reason"]
    # the drift test against the champion ran, and its decision is on both runs
    assert 0 < summary["drift"]["p_value"] <= 1 and summary["drift"]["n_reference"] > 0
    assert retrain_run.data.tags["retrain_decision"].startswith("data changed since champion v1; drift MMD²")
    assert summary["decision"] == retrain_run.data.tags["retrain_decision"]
    drift_stage = client.search_runs(
        [retrain_run.info.experiment_id],
        f"tags.mlflow.parentRunId = '{retrain_run.info.run_id}' and tags.stage = 'drift'",
    )[0]
    assert drift_stage.data.metrics["drift_p_value"] == summary["drift"]["p_value"]
    assert {a.path for a in client.list_artifacts(drift_stage.info.run_id)} >= {"drift.png", "drift.json"}
    with get_client(sync_client=True) as prefect:
        decisions = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["retrain-decision"]))
        )
    assert any(a.data == f"**train**: {retrain_run.data.tags['retrain_decision']}" for a in decisions)


def test_a_champion_with_other_classes_is_kept_not_compared(project):
    root, args = project
    client = client_for(root)
    champion_before = str(client.get_model_version_by_alias(MODEL, "champion").version)
    other = root / "data" / "other"
    make_image_folder(other, ["dog", "eel", "gnu"], per_class=30, seed=4)
    assert main([*args, "train", "--data", str(other)]) == 0
    summary = json.loads((root / "reports" / "train.json").read_text())
    assert summary["champion_before"]["version"] == champion_before
    assert summary["champion_before"]["metrics"] is None
    assert "['dog', 'eel', 'fox']" in summary["champion_before"]["not_comparable"]
    assert summary["registered"]["promoted"] is False
    assert summary["registered"]["reason"].startswith("champion not comparable")
    client = client_for(root)
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == champion_before
    challenger = client.get_model_version_by_alias(MODEL, "challenger")
    assert str(challenger.version) == summary["registered"]["version"]
    assert challenger.tags["promotion"] == summary["registered"]["reason"]


def test_status_json_reports_champion_metrics_and_data_version(project, capsys):
    args = project[1]
    capsys.readouterr()
    assert main([*args, "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    champion = status["aliases"]["champion"]
    assert champion["data_version"].endswith(".dir")
    assert set(champion["metrics"]) >= {"test_accuracy", "test_macro_f1"}
    low, high = champion["intervals"]["test_macro_f1"]
    assert low <= champion["metrics"]["test_macro_f1"] <= high
    assert status["last_moves"][0]["to_version"] == "1" and status["last_moves"][0]["by"] == "gate"
    assert main([*project[1], "status"]) == 0
    text = capsys.readouterr().out
    assert f"test_macro_f1 {champion['metrics']['test_macro_f1']:.4f} [{low:.3f}, {high:.3f}]" in text
    assert "last champion moves" in text and "none -> v1  by gate: no champion yet" in text


def test_schedule_creates_a_cron_deployment_of_retrain(project):
    from prefect.client.orchestration import get_client

    from flows.schedule import deploy_retrain
    from tasks.core.config import load_params

    root = project[0]
    params = load_params(None, {"finetune": {"head_epochs": 3}})
    deployment_id = deploy_retrain("0 3 * * 1", root, params, None, "transferops-test")
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)
    assert deployment.name == "scheduled-retrain"
    assert deployment.entrypoint == "flows/retrain.py:retrain_flow"
    assert deployment.work_pool_name == "transferops-test"
    assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * 1"]
    assert deployment.description.startswith("transferops retrain: when the data version changed")
    assert set(deployment.tags) == {"transferops", "retrain"}
    assert deployment.parameters == {"params": params.as_dict(), "root": str(root), "data_dir": None}
    # what the deployment passes comes back as the same Params when a run starts
    from flows.retrain import retrain_flow

    assert retrain_flow.validate_parameters(deployment.parameters)["params"] == params


def test_predict_labels_files_through_the_served_pyfunc(project, capsys, tmp_path):
    root, args = project
    image = sorted((root / "data" / "raw" / "eel").glob("*.png"))[0]
    junk = tmp_path / "notes.png"
    junk.write_bytes(b"not an image at all")
    capsys.readouterr()
    assert main([*args, "predict", str(image), str(junk)]) == 0
    lines = capsys.readouterr().out.splitlines()
    champion = client_for(root).get_model_version_by_alias(MODEL, "champion").version
    assert lines[0] == f"{MODEL} v{champion} ({MODEL}@champion): 2 files"
    path, label, confidence = lines[1].split("  ")
    assert path == str(image) and label in {"dog", "eel", "fox"} and 0 < float(confidence) <= 1
    assert lines[2].startswith(f"{junk}  error: ")
    assert main([*args, "predict", str(image), "--model", "1"]) == 0
    assert capsys.readouterr().out.startswith(f"{MODEL} v1 ({MODEL}/1)")
    assert main([*args, "predict", str(tmp_path / "missing.png")]) == 2
    assert "missing.png: no such file or folder" in capsys.readouterr().err


def test_predict_streams_a_folder_to_parquet_and_csv(project, capsys, tmp_path):
    """A folder walked (hidden files skipped), a row per file in Parquet and CSV, errors in
    their own rows, nothing partial left behind."""
    root, args = project
    folder = shutil.copytree(root / "data" / "raw", tmp_path / "photos")
    (folder / "eel" / ".DS_Store").write_bytes(b"junk")
    (folder / "eel" / "broken.png").write_bytes(b"not an image")
    expected = sorted(str(p) for p in folder.rglob("*.png"))
    for out in (tmp_path / "labels.parquet", tmp_path / "labels.csv"):
        assert main([*args, "predict", str(folder), "--out", str(out)]) == 0
        said = capsys.readouterr().out.splitlines()[-1]
        assert said.startswith(f"wrote {len(expected)} rows to {out} (1 errors; ")
        rows = pd.read_parquet(out) if out.suffix == ".parquet" else pd.read_csv(out)
        assert list(rows.columns) == ["path", "label", "confidence", "error"]
        assert sorted(rows["path"]) == expected
        broken = rows[rows["path"].str.endswith("broken.png")].iloc[0]
        assert isinstance(broken["error"], str) and pd.isna(broken["label"])
        good = rows[rows["error"].isna()]
        assert set(good["label"]) <= {"dog", "eel", "fox"} and good["confidence"].between(0, 1).all()
        assert not list(tmp_path.glob(".*partial"))
    assert main([*args, "predict", str(folder), "--out", str(tmp_path / "labels.json")]) == 2
    assert "write .parquet or .csv" in capsys.readouterr().err


def test_export_checks_the_version_on_its_test_split_and_records_the_parity(project, capsys):
    """The challenger (its data folder is as it was) as TFLite float16, checked in the LiteRT
    interpreter on all its test images; a bad flag and a version whose data is gone end in one
    line."""
    root, args = project
    version = client_for(root).get_model_version_by_alias(MODEL, "challenger").version
    capsys.readouterr()
    assert main([*args, "export", "@challenger", "--format", "tflite", "--quantize", "float16"]) == 0
    said = capsys.readouterr().out.splitlines()
    assert (
        said[0]
        == f"{MODEL} v{version} ({MODEL}@challenger): export tflite-float16, checked on its test split"
    )
    path = root / ".transferops" / "exports" / MODEL / f"v{version}" / "model-float16.tflite"
    assert said[1].startswith(f"wrote {path}: ") and path.stat().st_size > 0
    client = client_for(root)
    tags = client.get_model_version(MODEL, version).tags
    inputs = client.get_run(tags["mlflow_run_id"]).inputs.dataset_inputs  # the splits its run recorded
    test = next(i for i in inputs if {t.key: t.value for t in i.tags}["mlflow.data.context"] == "test")
    tested = sum(json.loads(next(t.value for t in test.tags if t.key == "class_counts")).values())
    assert int(tags["export.tflite-float16.images"]) == tested
    assert float(tags["export.tflite-float16.agreement"]) >= 0.995
    assert tags["export.tflite-float16.status"] == "exported"
    assert abs(float(tags["export.tflite-float16.accuracy_drop"])) <= 0.01
    assert tags["export.tflite-float16.path"] == str(path)

    assert main([*args, "export", "@challenger", "--format", "onnx", "--quantize", "int8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after the params notice)
    assert err == (
        "transferops: export: --quantize int8 applies to --format tflite only "
        "(float16, int8); SavedModel and ONNX keep float32 weights"
    )
    # v1's folder has changed since (the retrain added images) and was never `dvc add`-ed
    before = client_for(root).get_model_version(MODEL, "1").tags
    assert main([*args, "export", "1", "--format", "onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1].startswith("transferops: data version ") and "transferops-classifier v1 is not at" in err[-1]
    )
    assert "Traceback" not in "\n".join(err)
    # nothing recorded (its export.onnx.* tags are those of the register stage's own check)
    assert client_for(root).get_model_version(MODEL, "1").tags == before


SEARCH = sets(
    {
        "search.enabled": "true",
        "search.head_trials": 2,
        "search.max_epochs": 2,
        "search.budget_epochs": 2,
        "search.strategies": "[head, top, scratch]",
        "search.unfreeze_layers": "[2]",
        "search.scratch_epochs": 2,
        "select.top_k": 2,
    }
)


def search_of(client: MlflowClient, run_id: str) -> dict:
    """search.json of the finetune stage of flow run `run_id`."""
    finetune_run = child_run(client, run_id, "finetune")
    path = mlflow.artifacts.download_artifacts(run_id=finetune_run.info.run_id, artifact_path="search.json")
    return json.loads(Path(path).read_text())


def test_the_strategy_search_logs_a_run_per_trial_and_tags_the_version(project):
    """With LogME's best two backbones kept: head trials on both one's cached features, fine-tune
    trials of the better one, the scratch baseline."""
    root, args = project
    assert main([*args, *SEARCH, "train"]) == 0
    summary = json.loads((root / "reports" / "train.json").read_text())
    client = client_for(root)
    finetune_run = child_run(client, summary["mlflow_run_id"], "finetune")
    found = search_of(client, summary["mlflow_run_id"])
    assert summary["strategy"] == found["explanation"]
    assert "6 head trials on cached features" in found["explanation"]  # 2 rates and logistic, twice
    trials = client.search_runs(
        [finetune_run.info.experiment_id], f"tags.mlflow.parentRunId = '{finetune_run.info.run_id}'"
    )
    assert len(trials) == len(found["trials"]) >= 3
    backbones = {"registry:transferops-backbone@pretrained", "keras:MobileNetV3Small"}
    epochs = {f"trial-{t['trial_id']}": t["epochs"] for t in found["trials"]}
    for trial in trials:
        params = trial.data.params
        assert params["strategy"] in {"head", "top", "scratch"}
        assert params["strategy"] == "scratch" or params["backbone"] in backbones
        history = client.get_metric_history(trial.info.run_id, "val_accuracy")
        assert len(history) == epochs[trial.info.run_name] >= 1  # the whole curve, epoch by epoch
        assert all(0 <= m.value <= 1 for m in history)
    assert [t.info.run_name for t in trials].count("trial-scratch") == 1

    def selection_of(run_id: str) -> dict:
        select_run = child_run(client, run_id, "select")
        path = mlflow.artifacts.download_artifacts(
            run_id=select_run.info.run_id, artifact_path="selection.json"
        )
        return json.loads(Path(path).read_text())

    chosen = selection_of(summary["mlflow_run_id"])
    assert {chosen["chosen"], *chosen["runners_up"]} == backbones
    # the fixture's run had the search off: no runner-up was kept (or cached) for nothing
    assert selection_of(client.get_model_version(MODEL, "1").tags["mlflow_run_id"])["runners_up"] == []
    version = client.get_model_version(MODEL, summary["registered"]["version"])
    assert json.loads(version.tags["strategy"]) == found["chosen"]
    assert version.tags["backbone"] == found["backbone"] == summary["backbone"]
    assert json.loads(client.get_model_version(MODEL, "1").tags["strategy"]) == "fixed recipe"


def test_a_retrain_with_the_search_lets_the_champion_compete_with_fresh_starts(project):
    """Warm starts go through the search: the champion's backbone (head trials from its head)
    beside LogME's best two fresh candidates; the version records the champion either way."""
    root, args = project
    client = client_for(root)
    champion = str(client.get_model_version_by_alias(MODEL, "champion").version)
    make_image_folder(root / "data" / "raw", ["dog", "eel", "fox"], per_class=4, seed=5)  # new data
    assert main([*args, *SEARCH, "retrain"]) == 0
    summary = json.loads((root / "reports" / "retrain.json").read_text())
    found = search_of(client, summary["mlflow_run_id"])
    warm = f"registry:{MODEL}@champion (v{champion})"
    heads = {t["hyperparameters"]["backbone"] for t in found["trials"] if t["trial_id"] != "scratch"}
    assert heads >= {warm, "registry:transferops-backbone@pretrained", "keras:MobileNetV3Small"}
    version = client.get_model_version(MODEL, summary["registered"]["version"])
    assert version.tags["warm_start_version"] == champion  # rebuilt (and kept by gc) from it
    assert version.tags["backbone"] == found["backbone"] == summary["backbone"]
    assert json.loads(version.tags["strategy"]) == found["chosen"]


def test_a_search_that_keeps_the_raw_pixel_baseline_registers_and_serves_it(project, capsys):
    """The raw-pixel baseline is a backbone of no candidate: kept, its version names it
    (`pixels:28`, nothing pretrained to pin) and serves through the pyfunc like any other."""
    root, args = project
    only = sets({"search.enabled": "true", "search.strategies": "[raw]", "select.top_k": 2})
    assert main([*args, *only, "train"]) == 0
    summary = json.loads((root / "reports" / "train.json").read_text())
    version = client_for(root).get_model_version(MODEL, summary["registered"]["version"])
    assert version.tags["backbone"] == summary["backbone"] == "pixels:28"
    assert version.tags["backbone_version"] == ""
    assert json.loads(version.tags["strategy"])["strategy"] == "raw"
    image = sorted((root / "data" / "raw" / "fox").glob("*.png"))[0]
    capsys.readouterr()
    assert main([*args, "predict", str(image), "--model", str(version.version)]) == 0
    path, label, confidence = capsys.readouterr().out.splitlines()[1].split("  ")
    assert path == str(image) and label in {"dog", "eel", "fox"} and 0 < float(confidence) <= 1


def test_distill_trains_a_student_on_a_versions_soft_targets_and_gates_it(project, capsys, tmp_path):
    """`distill`: the student (the stand-in backbone, at the teacher's input size) learns the
    newest version's soft targets in both phases, on the train split and a transfer set of
    unlabelled images the teacher labels too (any layout; a broken file skipped), then is
    registered through the gate like any challenger, its teacher and transfer set in its
    lineage (and kept by gc as its parent)."""
    from tasks.data.datasets import unlabelled
    from tasks.retention.keep import parents_of

    root, args = project
    client = client_for(root)
    teacher = max(int(v.version) for v in client.search_model_versions(f"name='{MODEL}'"))
    champion = client.get_model_version_by_alias(MODEL, "champion").version
    student = "registry:transferops-backbone@pretrained"
    photos = make_image_folder(tmp_path / "photos", ["2025", "2026"], per_class=9, seed=7)
    make_image_folder(photos / "2026", ["june"], per_class=4, seed=8)
    (photos / "2026" / "broken.png").write_bytes(b"not a png")
    capsys.readouterr()
    assert main([*args, "distill", str(teacher), "--student", student, "--unlabelled", str(photos)]) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"distill {MODEL} v{teacher} ({MODEL}/{teacher}) into {student}\n")
    summary = json.loads((root / "reports" / "distill.json").read_text())
    version = client.get_model_version(MODEL, summary["registered"]["version"])
    assert int(version.version) == teacher + 1 and summary["backbone"] == student
    assert version.tags["distilled_from"] == f"{MODEL}/{teacher}"
    transfer = json.loads(version.tags["distill_transfer_set"])
    assert transfer == {
        "folder": str(photos),
        "images": 22,
        "digest": unlabelled(photos, Images(max_pixels=10**8)).digest(),
    }
    recorded = json.loads(version.tags["params"])
    assert recorded["finetune"]["distill_from"] == f"{MODEL}/{teacher}"
    assert recorded["finetune"]["distill_unlabelled"] == str(photos)
    assert recorded["finetune"]["finetune_epochs"] == 2 and recorded["search"]["enabled"] is False
    assert version.tags["compared_with"] == str(champion)  # the gate, as for any challenger
    assert (MODEL, str(teacher)) in parents_of(MODEL, dict(version.tags))
    assert main([*args, "distill", str(teacher), "--student", student, "--unlabelled", "nowhere"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"transferops: transfer set {Path('nowhere').resolve()}: no such folder (distill --unlabelled, "
        "finetune.distill_unlabelled); point it at a folder of unlabelled images"
    )
    assert main([*args, "distill", "999", "--student", student]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"transferops: distill: {MODEL}/999 is not a registered version; `transferops status` shows what is"
    )
