"""The seams: flows wire and record, tasks decide; tasks/ is packages by concern whose imports go
one way (the order of LAYERS), with no import cycle anywhere and rooms of a readable size."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL_LIBRARIES = {"numpy", "pandas", "keras", "tensorflow", "sklearn", "PIL"}
# The packages of tasks/, lowest first: each may import only itself and those before it
# (tasks/__init__.py says what each owns).
LAYERS = (
    *("core", "modality", "data", "evaluation", "models", "search", "registry"),
    *("selection", "promotion", "reporting", "retention"),
)
MAX_MODULES_PER_FOLDER = 12
MAX_LINES_PER_MODULE = 400


def source_files(top: str) -> list[Path]:
    return sorted(p for p in (ROOT / top).rglob("*.py") if "assets" not in p.parts)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Top-level names of everything `path` imports, at module level or inside functions."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module.split(".")[0])
    return modules


def project_imports(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports (`from tasks.data import ingest` is tasks.data.ingest)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module not in known:
                continue
            subs = {f"{node.module}.{alias.name}" for alias in node.names} & known
            found |= subs or {node.module}
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for top in ("tasks", "flows") for p in source_files(top)}
    return {name: project_imports(path, set(files)) - {name} for name, path in files.items()}


def layer(module: str) -> int:
    parts = module.split(".")
    if parts[0] != "tasks" or len(parts) < 2:
        return len(LAYERS)  # flows, and tasks/__init__: above every package
    return LAYERS.index(parts[1])


def test_every_tasks_module_lives_in_a_known_package():
    for path in source_files("tasks"):
        relative = path.relative_to(ROOT / "tasks")
        if relative == Path("__init__.py"):
            continue
        assert len(relative.parts) == 2 and relative.parts[0] in LAYERS, f"tasks/{relative}"


def test_every_package_says_what_it_owns():
    for name in (*(f"tasks/{p}" for p in LAYERS), "tasks", "flows", "flows/stages"):
        doc = ast.get_docstring(ast.parse((ROOT / name / "__init__.py").read_text()))
        assert doc and len(doc) > 80, f"{name}/__init__.py needs a docstring saying what it owns"


def test_imports_go_one_way():
    for module, imports in import_graph().items():
        for target in imports:
            if module.startswith("tasks"):
                assert not target.startswith("flows"), f"{module} imports {target}: tasks never import flows"
            assert layer(target) <= layer(module), f"{module} imports {target}, a higher package"


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])


def test_the_cycle_check_finds_a_cycle(monkeypatch):
    """The check above can fail: a made-up graph with a cycle is caught."""
    monkeypatch.setattr(sys.modules[__name__], "import_graph", lambda: {"a": {"b"}, "b": {"c"}, "c": {"a"}})
    with pytest.raises(pytest.fail.Exception, match="a -> b -> c -> a"):
        test_no_import_cycle()


def test_rooms_of_a_readable_size():
    folders = {p.parent for top in ("tasks", "flows") for p in source_files(top)}
    for folder in folders:
        modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= MAX_MODULES_PER_FOLDER, f"{folder.relative_to(ROOT)}: {len(modules)} modules"
    for top in ("tasks", "flows"):
        for path in source_files(top):
            lines = len(path.read_text().splitlines())
            assert lines <= MAX_LINES_PER_MODULE, f"{path.relative_to(ROOT)}: {lines} lines"


def test_flows_import_no_model_or_array_library():
    for path in source_files("flows"):
        assert not imported_modules(path) & MODEL_LIBRARIES, path.relative_to(ROOT)


def test_the_served_model_imports_only_what_it_ships():
    """A served model carries `SERVING_MODULES` of `tasks` and nothing else: they import only
    each other (a module of a package, `from tasks.modality import texts`, by its own name)."""
    from tasks.registry.versions import SERVING_MODULES

    shipped = {"tasks." + m.removesuffix(".py").replace("/", ".") for m in SERVING_MODULES}
    packages = {m.rpartition(".")[0] for m in shipped}
    assert {"tasks.modality.images", "tasks.modality.text_rows", "tasks.registry.serving"} <= shipped
    for module in SERVING_MODULES:
        imported = set()
        for node in ast.walk(ast.parse((ROOT / "tasks" / module).read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tasks"):
                package = node.module in packages
                imported |= {f"{node.module}.{a.name}" for a in node.names} if package else {node.module}
        assert imported <= shipped, (module, imported - shipped)


def test_tests_mirror_the_packages():
    folders = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders <= {*LAYERS, "flows"}, folders - {*LAYERS, "flows"}
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert len(names) == len(set(names)), "test file names must be unique (pytest's rootdir imports)"


def test_status_and_help_import_no_tensorflow_or_great_expectations(tmp_path):
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


def dynamic_importers() -> set[str]:
    """Modules that import by a name computed at run time (`importlib.import_module`, `__import__`)."""
    found = set()
    for top in ("tasks", "flows"):
        for path in source_files(top):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call):
                    called = node.func
                    name = called.attr if isinstance(called, ast.Attribute) else getattr(called, "id", "")
                    if name in ("import_module", "__import__"):
                        found.add(module_name(path))
    return found


def test_every_dynamic_import_is_named_for_the_cache_keys():
    """A stage's cache key follows imports the syntax shows; the others must be named."""
    from tasks.core import codekey

    importers = dynamic_importers()
    assert "tasks.registry.versions" in importers  # the check sees one
    assert importers <= set(codekey.DYNAMIC_IMPORTS), importers - set(codekey.DYNAMIC_IMPORTS)
    for module, targets in codekey.DYNAMIC_IMPORTS.items():
        assert all(codekey.module_path(t) is not None for t in (module, *targets)), module


# The image modality's own modules: decoding and `Pixels`, Lite0's port, the image demo data,
# and its params section (`images:`, beside `texts:` in tasks/core/sections.py).
IMAGE_MODULES = {"tasks/modality/images.py", "tasks/modality/pixels.py", "tasks/models/lite0.py"}
IMAGE_MODULES |= {"tasks/data/fashion_mnist.py", "tasks/core/sections.py"}
IMAGE_WORDS = ("Pixels", "image_size", "max_pixels", "PIL")


def code_words(path: Path) -> set[str]:
    """The names a module uses (variables, attributes, arguments, imports) and its string
    constants, docstrings and comments left out."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif isinstance(node, ast.arg):
            words.add(node.arg)
        elif isinstance(node, ast.alias):
            words.add(node.name)
        elif isinstance(node, ast.ImportFrom):
            words.add(node.module or "")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.add(node.value)
    return words


def test_image_ness_stays_behind_the_modality_seam():
    """Outside the image modality's own modules, no module names what an image is made of."""
    naming = {
        path.relative_to(ROOT).as_posix()
        for top in ("tasks", "flows")
        for path in source_files(top)
        if any(word in found for found in code_words(path) for word in IMAGE_WORDS)
    }
    assert naming - IMAGE_MODULES == set()
    assert "tasks/modality/pixels.py" in naming  # the check sees what it looks for
