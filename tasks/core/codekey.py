"""What code a result depends on: the import closure of a module inside the project, and one
digest of the syntax trees of every module in it.

A cached stage (and the checkpoints of a training, keyed like its result) must be recomputed
when any code it can run changes, and only then. The modules it can run are found from the
code itself: every `import` of a project module, at module level or inside a function, followed
transitively, with the `__init__` of every package on the way (importing `tasks.data.ingest`
runs `tasks/__init__.py` and `tasks/data/__init__.py`). A module is keyed by its syntax tree
without docstrings, so an edit to a comment or a docstring keeps every cache.

Imports the syntax cannot show (`importlib.import_module`) are named in `DYNAMIC_IMPORTS`;
tests/test_layout.py fails on one that is not.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from functools import cache
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # holds the packages `tasks` and `flows`
PACKAGES = ("tasks", "flows")
# The stage machinery: it looks results up, stores them and records them in MLflow, and computes
# none; a stage's key covers its own module and what that reaches, not these nor what they import.
MACHINERY = frozenset({"flows.stages.caching", "flows.stages.flowrun"})

# module -> the project modules it imports by name at run time, out of reach of `ast`
DYNAMIC_IMPORTS: dict[str, tuple[str, ...]] = {
    "tasks.registry.versions": ("tasks.registry.serving", "tasks.modality.images"),  # _MOVED_SERVING_MODULES
}


def module_path(module: str, root: Path = PROJECT_ROOT) -> Path | None:
    """The source file of project module `module` (a package's `__init__.py`), or None."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _resolve(
    module: str, name: str | None, level: int, importer: str, is_package: bool, root: Path
) -> list[str]:
    """The project modules an import statement names: `from a.b import c` is `a.b.c` when that is
    a module, else `a.b`; relative imports are resolved against `importer`."""
    if level:
        parts = importer.split(".")
        parts = parts if is_package else parts[:-1]
        parts = parts[: len(parts) - (level - 1)]
        module = ".".join([*parts, module] if module else parts)
    if name is not None and module_path(f"{module}.{name}", root) is not None:
        return [f"{module}.{name}"]
    return [module]


def direct_imports(module: str, root: Path = PROJECT_ROOT) -> set[str]:
    """The project modules `module` imports anywhere in its source (and `DYNAMIC_IMPORTS`)."""
    path = module_path(module, root)
    if path is None:
        return set()
    is_package = path.name == "__init__.py"
    found: set[str] = set(DYNAMIC_IMPORTS.get(module, ()))
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                found.update(_resolve(node.module or "", alias.name, node.level, module, is_package, root))
    return {m for m in found if module_path(m, root) is not None}


def _with_packages(module: str) -> list[str]:
    """`module` and every package above it (`tasks`, `tasks.data`, `tasks.data.ingest`)."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@cache
def closure(modules: tuple[str, ...], root: Path = PROJECT_ROOT) -> frozenset[str]:
    """Every project module that importing `modules` can run, `modules` included, short of the
    stage machinery (`MACHINERY`)."""
    seen: set[str] = set()
    todo = [p for m in modules for p in _with_packages(m)]
    while todo:
        module = todo.pop()
        if module in seen or module in MACHINERY or module_path(module, root) is None:
            continue
        seen.add(module)
        for imported in direct_imports(module, root):
            todo.extend(_with_packages(imported))
    return frozenset(seen)


class _NoDocstrings(ast.NodeTransformer):
    """Drops the docstring of the module and of every class and function."""

    def _strip(self, node: ast.AST) -> ast.AST:
        self.generic_visit(node)
        body = getattr(node, "body", None)
        first = body[0].value if body and isinstance(body[0], ast.Expr) else None
        if isinstance(first, ast.Constant) and isinstance(first.value, str):  # a docstring
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
        return node

    visit_Module = visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _strip


def syntax_digest(path: Path) -> str:
    """sha256 of the syntax tree of the Python file `path` without comments or docstrings."""
    tree = _NoDocstrings().visit(ast.parse(path.read_text(), str(path)))
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()


def code_digest(modules: Iterable[str], root: Path = PROJECT_ROOT) -> str:
    """One digest of the syntax trees of the project modules `modules` and all they import."""
    names = sorted(closure(tuple(sorted(modules)), root))
    digests = {name: syntax_digest(path) for name in names if (path := module_path(name, root))}
    payload = "\n".join(f"{name} {digest}" for name, digest in digests.items())
    return hashlib.sha256(payload.encode()).hexdigest()
