"""Months unattended, in six rounds (more than retention keeps: the last 2 versions and 2
moves): the data changes a little, `retrain` runs (and `gc` after it, as the scheduled
deployment does); the project's disk use stays within twice its size after the first round, the
versions that matter stay, and the champion can still be rebuilt. (Ten rounds until 2026-12-07:
the last four cost about 50 s of CI and showed nothing the first six do not.)"""

from __future__ import annotations

import json

import pytest
from conftest import clear_mlflow_env, dvc, make_image_folder, sets, use_store

from flows.cli import main
from tasks.retention.files import size_of

pytestmark = pytest.mark.slow

MODEL = "transferops-classifier"
ROUNDS = 6
FAST = sets(
    {
        "images.candidates": "[{uri: 'registry:transferops-backbone@pretrained'}]",
        "pretrain.epochs": 2,
        "pretrain.width": 8,
        "pretrain.batch_size": 16,
        "finetune.head_epochs": 2,
        "finetune.finetune_epochs": 1,
        "finetune.batch_size": 16,
        "search.enabled": "false",  # the fixed recipe: what gc keeps is the point here
        "retrain.drift_samples": 20,
        "retrain.drift_permutations": 20,
        "retention.keep_last": 2,
        "retention.keep_moves": 2,
        "retention.keep_validations": 2,
        "retention.min_age_minutes": 0,  # the default spares files of the last 10 minutes
    }
)


def versions(root) -> set[str]:
    return {str(v.version) for v in use_store(root).search_model_versions(f"name = '{MODEL}'")}


def test_retrain_rounds_with_gc_stay_within_twice_the_first(tmp_path, prefect_harness, capsys):
    root = tmp_path / "project"
    make_image_folder(root / "data" / "source", ["ant", "bee", "cat"], per_class=30, seed=1)
    make_image_folder(root / "data" / "raw", ["dog", "eel", "fox"], per_class=20, seed=2)
    (root / "data" / "raw.old-20250101-000000").mkdir()  # left by `transferops data --force`
    (root / "data" / "raw.old-20250101-000000" / "x.png").write_bytes(b"old")
    dvc(root, "init", "--no-scm", "-q")
    dvc(root, "add", "-q", "data/raw")
    args = ["--root", str(root), *FAST]
    with pytest.MonkeyPatch.context() as mp:
        clear_mlflow_env(mp)
        assert main([*args, "pretrain"]) == 0
        assert main([*args, "train"]) == 0
        sizes = []
        for round_ in range(ROUNDS):
            # a little new data each round: five images replaced, versioned with DVC
            for old in sorted((root / "data" / "raw" / "eel").glob("*.png"))[:5]:
                old.unlink()
            extra = make_image_folder(tmp_path / f"new{round_}", ["eel"], per_class=5, seed=100 + round_)
            for png in (extra / "eel").glob("*.png"):
                png.rename(root / "data" / "raw" / "eel" / png.name)
            dvc(root, "add", "-q", "data/raw")
            assert main([*args, "retrain"]) == 0
            out = capsys.readouterr().out
            assert "gc freed" in out or "gc: nothing to free" in out
            sizes.append(size_of(root))
            # the aliases, the last 2, the last 2 moves' versions and what they started from overlap
            assert len(versions(root)) <= 6
        assert max(sizes) <= 2 * sizes[0], sizes

        client = use_store(root)
        champion = str(client.get_model_version_by_alias(MODEL, "champion").version)
        challenger = str(client.get_model_version_by_alias(MODEL, "challenger").version)
        kept = versions(root)
        assert {champion, challenger, str(ROUNDS + 1), str(ROUNDS)} <= kept
        assert not (root / "data" / "raw.old-20250101-000000").exists()
        assert len(list((root / ".transferops" / "data_docs").iterdir())) <= 4

        # nothing left to free, and a dry run says so without deleting
        assert main([*args, "gc", "--dry-run"]) == 0
        assert capsys.readouterr().out.splitlines()[-1] == "gc: nothing to free"

        # the champion still rebuilds from what it recorded (its data from DVC if it changed since)
        assert main([*args, "reproduce", champion]) == 0
        report = json.loads((root / "reports" / "reproduce.json").read_text())
        assert report["reproduction"]["matches"], report["reproduction"]
