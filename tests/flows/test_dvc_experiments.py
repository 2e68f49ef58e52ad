"""DVC on the real pipeline: `dvc repro` and `dvc exp run -S ...` in a git repository made from
this checkout (tiny data, tiny params), then `dvc exp show --json`, `dvc metrics diff` and
`dvc plots show` read the numbers and curves the stages left under metrics/. Also: the
committed dvc.lock matches the committed data and metrics."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import make_image_folder

REPO = Path(__file__).resolve().parents[2]
OFFLINE_TEMPLATE = "offline_plots.html"  # vega inlined: `dvc plots show` draws without a CDN


def plots_template() -> str:
    """The HTML template the committed .dvc/config gives `dvc plots`."""
    import configparser

    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    return config["plots"]["html_template"]


TINY = {
    "pretrain": {"epochs": 2, "width": 8, "batch_size": 16},
    "images": {"candidates": [{"uri": "registry:transferops-backbone@pretrained"}]},
    "finetune": {"head_epochs": 4, "finetune_epochs": 1, "batch_size": 16},
    "search": {"enabled": False},
}


def run(root: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def dvc(root: Path, env: dict[str, str], *args: str) -> str:
    return run(root, env, sys.executable, "-m", "dvc", *args)


def git(root: Path, env: dict[str, str], *args: str) -> str:
    return run(root, env, "git", *args)


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory):
    """A git + DVC repository with this checkout's pipeline, reproduced once and committed."""
    root = tmp_path_factory.mktemp("dvc-project")
    for name in ("flows", "tasks"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".venv").symlink_to(Path(sys.prefix))  # the stages run .venv/bin/transferops
    (root / ".gitignore").write_text("/.venv\n/mlflow/\n/reports/\n/.transferops/\n/dvc_plots/\n")
    make_image_folder(root / "data" / "source", ["ant", "bee", "cat"], per_class=40, seed=1)
    make_image_folder(root / "data" / "raw", ["dog", "eel", "fox"], per_class=30, seed=2)
    env = {**os.environ, "PREFECT_HOME": str(root.parent / "prefect"), "TRANSFEROPS_PROGRESS": "0"}
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(name, None)
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t")
    env.update(GIT_COMMITTER_EMAIL="t@example.com")
    git(root, env, "init", "-q", "-b", "main")
    dvc(root, env, "init", "-q")
    shutil.copy(REPO / ".dvc" / OFFLINE_TEMPLATE, root / ".dvc" / OFFLINE_TEMPLATE)
    dvc(root, env, "config", "plots.html_template", plots_template())
    dvc(root, env, "add", "-q", "data/source", "data/raw")
    git(root, env, "add", "-A")
    git(root, env, "commit", "-q", "-m", "data and pipeline")
    dvc(root, env, "repro")
    git(root, env, "add", "-A")
    git(root, env, "commit", "-q", "-m", "reproduced")
    return root, env


pytestmark_slow = pytest.mark.slow


def entries(node) -> list[dict]:
    """Every revision of `dvc exp show --json` (baseline and experiments), at any depth."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("data"), dict) and "metrics" in node["data"]:
            found.append(node)
        for value in node.values():
            found += entries(value)
    elif isinstance(node, list):
        for value in node:
            found += entries(value)
    return found


@pytestmark_slow
def test_an_experiment_and_its_baseline_show_numeric_metrics(dvc_project):
    root, env = dvc_project
    assert "up to date" in dvc(root, env, "status")  # dvc.lock matches what was committed
    out = dvc(root, env, "exp", "run", "-S", "finetune.head_epochs=2")
    assert "Stage 'pretrain' didn't change, skipping" in out  # only the changed stage reran
    shown = json.loads(dvc(root, env, "exp", "show", "--json"))
    rows = {}
    for entry in entries(shown):
        data = entry["data"]
        metrics = data["metrics"]["metrics/train.json"]["data"]
        head_epochs = data["params"]["params.yaml"]["data"]["finetune"]["head_epochs"]
        rows[(entry.get("name") or entry.get("rev"), head_epochs)] = metrics
    assert {epochs for _, epochs in rows} == {4, 2}, rows.keys()  # the baseline and the experiment
    for metrics in rows.values():
        assert 0 <= metrics["test"]["accuracy"] <= 1 and 0 <= metrics["test"]["macro_f1"] <= 1
        assert metrics["examples"]["test"] > 0
    assert {m["epochs"]["head"] for m in rows.values()} >= {2}
    diff = json.loads(dvc(root, env, "metrics", "diff", "--json"))  # workspace (the experiment) vs HEAD
    assert diff["metrics/train.json"]["epochs.head"] == {"old": 4, "new": 2, "diff": -2}


@pytestmark_slow
def test_plots_show_draws_the_curves_and_the_confusion_matrix(dvc_project):
    root, env = dvc_project
    out = root / "dvc_plots"
    dvc(root, env, "plots", "show", "-o", str(out))
    html = (out / "index.html").read_text()
    for title in (
        "Fine-tuning accuracy",
        "Fine-tuning loss",
        "Test confusion matrix",
        "Pretraining accuracy",
    ):
        assert title in html
    assert '"val_accuracy"' in html and '"predicted"' in html
    assert "cdn.jsdelivr" not in html and "vegaEmbed" in html  # the libraries are in the page


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_the_committed_dvc_lock_matches_the_committed_data_and_metrics():
    """A fresh clone's `dvc status` finds the data and metrics dvc.lock records (the code deps
    change with every commit: `dvc repro` after the demo brings them up to date)."""
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    for stage, data in (("pretrain", "data/source"), ("train", "data/raw")):
        dep = next(d for d in lock[stage]["deps"] if d["path"] == data)
        assert dep["md5"] == yaml.safe_load((REPO / f"{data}.dvc").read_text())["outs"][0]["md5"]
        for out in lock[stage]["outs"]:
            assert out["md5"] == md5(REPO / out["path"]), f"{out['path']} differs from dvc.lock"
    assert plots_template() == OFFLINE_TEMPLATE and (REPO / ".dvc" / OFFLINE_TEMPLATE).is_file()
    numbers = json.loads((REPO / "metrics" / "train.json").read_text())
    assert 0 < numbers["test"]["macro_f1"] <= 1
