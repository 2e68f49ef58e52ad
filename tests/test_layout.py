"""The seams: flows wire and record, tasks decide."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_LIBRARIES = {"numpy", "pandas", "keras", "tensorflow", "sklearn", "PIL"}


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module.split(".")[0])
    return modules


def test_flows_import_no_model_or_array_library():
    for path in sorted((ROOT / "flows").glob("*.py")):
        assert not imported_modules(path) & MODEL_LIBRARIES, path.name


def test_the_served_model_imports_only_decoding():
    for module in ("serving.py", "images.py"):
        tasks_imports = {
            node.module
            for node in ast.walk(ast.parse((ROOT / "tasks" / module).read_text()))
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tasks")
        }
        assert tasks_imports <= {"tasks.images"}, module


def test_status_and_help_import_no_tensorflow_or_great_expectations(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from flows.cli import main\n"
        f"main(['--root', {str(tmp_path)!r}, 'status'])\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'great_expectations') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
