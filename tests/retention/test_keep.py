"""Retention's rules on a real (throwaway) MLflow store and a made-up `.transferops/` folder: what
is kept, and why, and that nothing outside the rules is touched."""

from __future__ import annotations

import os
import time

import mlflow
from mlflow import MlflowClient

from tasks.core.config import RetentionParams
from tasks.registry import history
from tasks.retention import files, keep

MODEL = "kept-classifier"


def make_versions(
    tmp_path, count: int, parents: dict[int, int], competed: dict[int, int] | None = None
) -> tuple[str, dict[int, str]]:
    """`count` versions of MODEL, each from its own flow run; version v started from version
    parents[v] (a warm start), or beat version competed[v] in its search (a warm start that
    lost). Returns the experiment id and version -> its run id."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_registry_uri(mlflow.get_tracking_uri())
    experiment = mlflow.create_experiment("kept", artifact_location=(tmp_path / "artifacts").as_uri())
    client = MlflowClient()
    client.create_registered_model(MODEL)
    runs = {}
    for v in range(1, count + 1):
        with mlflow.start_run(experiment_id=experiment) as run:
            with mlflow.start_run(experiment_id=experiment, nested=True):
                mlflow.set_tag(keep.RESULT_KEY, f"key{v}")
            (tmp_path / "w.txt").write_text(str(v))
            mlflow.log_artifact(str(tmp_path / "w.txt"))
        tags = {"mlflow_run_id": run.info.run_id, "data_version": f"data{v}.dir"}
        if v in parents:
            tags |= {"backbone": f"registry:{MODEL}@champion", "backbone_version": str(parents[v])}
        if v in (competed or {}):
            tags |= {"backbone": "keras:MobileNetV3Small", "warm_start_version": str(competed[v])}
        client.create_model_version(MODEL, f"runs:/{run.info.run_id}/w.txt", run.info.run_id, tags=tags)
        runs[v] = run.info.run_id
    return experiment, runs


def test_aliases_moves_the_last_k_and_what_they_started_from_are_kept(tmp_path):
    experiment, runs = make_versions(tmp_path, 9, parents={9: 5, 8: 5})
    client = MlflowClient()
    client.set_registered_model_alias(MODEL, "champion", "5")
    client.set_registered_model_alias(MODEL, "challenger", "9")
    history.record(MODEL, None, "2", "gate", "first")
    history.record(MODEL, "2", "3", "gate", "better")
    history.record(MODEL, "3", "5", "hand", "better still")

    kept = keep.plan([MODEL], experiment, RetentionParams(keep_last=2, keep_moves=1))
    assert {v: why.split()[0] for (_, v), why in kept.versions.items()} == {
        "5": "holds",  # champion
        "9": "holds",  # challenger
        "3": "in",  # the last move, 3 -> 5: a rollback goes back to 3
        "8": "one",  # the last 2
    }
    assert [v for _, v, _ in kept.dropped] == ["1", "2", "4", "6", "7"]
    assert kept.data_versions == {"data3.dir", "data5.dir", "data8.dir", "data9.dir"}
    assert kept.result_keys == {"key3", "key5", "key8", "key9"}  # the kept runs' stage results
    assert {runs[v] for v in (1, 2, 4, 6, 7)} <= set(kept.dropped_runs)
    assert not {runs[v] for v in (3, 5, 8, 9)} & set(kept.dropped_runs)

    keep.drop(kept)
    left = {str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'")}
    assert left == {"3", "5", "8", "9"}
    assert client.get_run(runs[1]).info.lifecycle_stage == "deleted"
    assert client.get_run(runs[9]).info.lifecycle_stage == "active"


def test_a_kept_version_keeps_the_version_it_started_from(tmp_path):
    experiment, _ = make_versions(tmp_path, 6, parents={6: 2})
    MlflowClient().set_registered_model_alias(MODEL, "champion", "6")
    kept = keep.plan([MODEL], experiment, RetentionParams(keep_last=1, keep_moves=0))
    assert sorted(v for _, v in kept.versions) == ["2", "6"]
    assert "started from" in kept.versions[(MODEL, "2")]


def test_only_what_no_kept_run_used_is_deleted_on_disk(tmp_path):
    work = tmp_path / ".transferops"
    for sub, name in [
        ("results", "keepme"),
        ("results", "dropme"),
        ("checkpoints", "finetune-keepme"),
        ("checkpoints", "finetune-dropme"),
        *(("data_docs", f"docs{i}") for i in range(4)),
        ("exports/clf", "v1"),
        ("exports/clf", "v2"),
        ("exports/other", "v1"),  # a model this project does not register (now): not ours to judge
        ("tables", f"{'a' * 32}-cols1234"),  # a staged table a kept version was trained on
        ("tables", f"{'b' * 32}-cols1234"),
    ]:
        (work / sub / name).mkdir(parents=True, exist_ok=True)
        (work / sub / name / "f").write_bytes(b"x" * 10)
    for i in range(4):  # docs0 oldest
        os.utime(work / "data_docs" / f"docs{i}", (time.time() - 4000 + i, time.time() - 4000 + i))
    (tmp_path / "data" / "raw.old-1").mkdir(parents=True)
    (tmp_path / "data" / "raw").mkdir()
    retention = RetentionParams(keep_validations=2, min_age_minutes=0)
    kept = {"clf": {"2"}}  # v1 of clf was deleted: its exports go
    data = [tmp_path / "data" / "raw"]
    doomed = files.doomed(tmp_path, retention, {"keepme"}, None, data, set(), kept, {"a" * 32})
    assert sorted((d.kind, str(d.path.relative_to(tmp_path))) for d in doomed) == [
        ("Data Docs", ".transferops/data_docs/docs0"),
        ("Data Docs", ".transferops/data_docs/docs1"),
        ("cached result", ".transferops/results/dropme"),
        ("checkpoint", ".transferops/checkpoints/finetune-dropme"),
        ("export", ".transferops/exports/clf/v1"),
        ("old data folder", "data/raw.old-1"),
        ("staged table", f".transferops/tables/{'b' * 32}-cols1234"),
    ]
    # a file newer than min_age_minutes may belong to a run in progress: spared
    assert files.doomed(tmp_path, RetentionParams(), {"keepme"}, None, [], set()) == []


def test_the_champion_a_version_beat_in_its_search_is_kept(tmp_path):
    """A retrain whose search preferred a fresh backbone to the champion still needs that
    champion to be rebuilt (`reproduce` runs the same search): gc keeps it."""
    experiment, _ = make_versions(tmp_path, 4, parents={}, competed={4: 2})
    MlflowClient().set_registered_model_alias(MODEL, "champion", "4")
    kept = keep.plan([MODEL], experiment, RetentionParams(keep_last=1, keep_moves=0))
    assert {v: why for (_, v), why in kept.versions.items()} == {
        "4": kept.versions[(MODEL, "4")],
        "2": f"v4 of {MODEL} started from it",
    }
