"""A stage's cache key covers all the code it can run (tasks.core.codekey): every project module
its module imports, found from the code. Checked three ways: on a made-up project, against what
Python's own import system loads for each stage, and on the real pipeline with its code edited
between runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import isolated_env, make_image_folder, sets

from tasks.core import codekey

ROOT = Path(__file__).resolve().parents[2]
STAGE_MODULES = sorted(
    f"flows.stages.{p.stem}"
    for p in (ROOT / "flows" / "stages").glob("*.py")
    if "@cached_stage(" in p.read_text()
)


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_digest_follows_imports_inside_functions_and_ignores_comments_and_docstrings(tmp_path):
    write(
        tmp_path,
        {
            "tasks/__init__.py": "",
            "tasks/a/__init__.py": "",
            "tasks/a/stage.py": (
                '"""A stage."""\n\ndef run():\n    from tasks.a import helper\n    return helper.f()\n'
            ),
            "tasks/a/helper.py": "from .leaf import g\n\ndef f():\n    return g() + 1\n",
            "tasks/a/leaf.py": "def g():\n    return 1\n",
            "tasks/a/unrelated.py": "X = 1\n",
        },
    )
    modules = ("tasks.a.stage",)

    def digest() -> str:
        codekey.closure.cache_clear()
        return codekey.code_digest(modules, tmp_path)

    assert codekey.closure(modules, tmp_path) == {
        "tasks", "tasks.a", "tasks.a.stage", "tasks.a.helper", "tasks.a.leaf"
    }  # fmt: skip
    before = digest()
    write(tmp_path, {"tasks/a/unrelated.py": "X = 2\n"})
    assert digest() == before
    documented = '"""Now documented."""\n\ndef g():  # one\n    """One."""\n    return 1\n'
    write(tmp_path, {"tasks/a/leaf.py": documented})
    assert digest() == before  # a docstring and a comment change no result
    write(tmp_path, {"tasks/a/leaf.py": "def g():\n    return 2\n"})  # reached by a relative import
    assert digest() != before
    changed = digest()
    write(tmp_path, {"tasks/a/__init__.py": "SETTING = 1\n"})  # runs on every import of tasks.a.*
    assert digest() != changed


# For each stage: in a child forked from one interpreter, import the stage module with the stage
# machinery (lookup, storage, MLflow logging) stubbed out and report the project modules Python's
# import system loaded for it. The parent loads the heavy third-party libraries first (no project
# module: checked), so each child pays for its own project imports only, not TensorFlow's.
LOADED = """
import json, os, sys, types
for heavy in ("numpy", "pandas", "tensorflow", "keras", "mlflow", "prefect", "sklearn"):
    __import__(heavy)
assert not [m for m in sys.modules if m.split(".")[0] in ("tasks", "flows")]
machinery, found = sys.argv[2:], {}
for stage in sys.argv[1].split(","):
    read, write = os.pipe()
    if os.fork() == 0:
        for name in machinery:
            stub = types.ModuleType(name)
            stub.__getattr__ = lambda attribute: (lambda *a, **k: (lambda f: f))
            sys.modules[name] = stub
        __import__(stage)
        project = [m for m in sys.modules if m.split(".")[0] in ("tasks", "flows") and m not in machinery]
        os.write(write, json.dumps(sorted(project)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        found[stage] = json.loads(pipe.read())
    os.wait()
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def loaded() -> dict[str, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", LOADED, ",".join(STAGE_MODULES), *sorted(codekey.MACHINERY)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("stage", STAGE_MODULES)
def test_the_key_covers_every_module_the_stage_really_imports(stage, loaded):
    imported = set(loaded[stage])
    assert stage in imported  # the child did import it
    # every stage decodes, or reaches the decoder (a modality is loaded when a run names it)
    assert "tasks.modality.images" in codekey.closure((stage,))
    assert imported <= codekey.closure((stage,)), sorted(imported - codekey.closure((stage,)))


def test_there_are_stages_to_check():
    assert {"flows.stages.select", "flows.stages.finetune", "flows.stages.evaluate"} <= set(STAGE_MODULES)


# --- the real pipeline, its code copied so that it can be edited between runs -----------------

FAST = sets(
    {
        "images.candidates": "[{uri: 'keras:MobileNetV3Small', weights: none, size: 32}]",
        "finetune.head_epochs": 2,
        "finetune.finetune_epochs": 1,
        "finetune.batch_size": 16,
        "search.enabled": "false",
        "register.serve_runtime": "keras",  # the ONNX check is tested end to end, not here
    }
)


def append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + line)


@pytest.mark.slow
def test_an_edit_to_code_a_stage_runs_recomputes_it_and_other_edits_keep_the_cache(tmp_path):
    code = tmp_path / "code"  # this checkout's packages, run from their copy
    for package in ("tasks", "flows"):
        shutil.copytree(ROOT / package, code / package, ignore=shutil.ignore_patterns("__pycache__"))
    project = tmp_path / "project"
    make_image_folder(project / "data" / "raw", ["dog", "eel"], per_class=10)
    env = isolated_env(tmp_path)

    def train() -> list[str]:
        done = subprocess.run(
            [sys.executable, "-m", "flows.cli", "--root", str(project), *FAST, "train"],
            cwd=code,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads((project / "reports" / "train.json").read_text())["reused"]

    assert train() == []
    append(code / "tasks" / "retention" / "sweep.py", "\nEDITED_BY_A_TEST = 1\n")  # no stage runs it
    append(code / "tasks" / "data" / "split.py", "\n# a comment\n")  # a comment changes nothing
    append(code / "tasks" / "models" / "epochs.py", "\nEDITED_BY_A_TEST = 1\n")  # the training code
    # select, finetune and evaluate import the training code; validate and split do not, and the
    # comment in split's own code keeps them reused (an edit to tasks/modality/images.py, the decoder,
    # reruns every stage: each imports it, as the test above checks without a run)
    assert train() == ["validate", "split"]


def test_no_stage_of_train_runs_retention():
    for stage in STAGE_MODULES:
        assert not {m for m in codekey.closure((stage,)) if m.startswith("tasks.retention")}, stage
