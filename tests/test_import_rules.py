"""The package layering of docs/architecture.md, checked on the source: no upward import, no import circle.

Layers, bottom to top: `trace_engine` (the ML engine: imports no service code), `core` (what the API and the workers
share: database, states, settings, job spec, registry; imports no HTTP or task code), then `api` (HTTP) and `worker`
(Celery tasks) side by side, neither importing the other. Every import counts, also one inside a function: a lazy
import is still a dependency, and a circle of lazy imports is still a circle that makes modules hard to move.
The checker is pure AST work on the files (nothing is imported), tested on small made-up trees below.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("trace_engine", "core", "api", "worker")
FORBIDDEN: Mapping[str, frozenset[str]] = {
    "trace_engine": frozenset({"core", "api", "worker"}),
    "core": frozenset({"api", "worker"}),
    "api": frozenset({"worker"}),
    "worker": frozenset({"api"}),
}
# Pure math: the losses import only torch and the standard library (design.md section 8).
PURE_MATH = {"trace_engine.losses": frozenset({"torch", "__future__", "math", "dataclasses", "typing", "collections",
                                               "enum", "functools"})}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            out[module_name(root, path)] = path
    return out


def imported_names(path: Path, module: str) -> set[str]:
    """Every absolute module name this file imports, anywhere in it (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            names.add(origin)
            names.update(f"{origin}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return names


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, set[str]]:
    """module -> project modules it imports (a name that is not a module counts as its nearest parent module)."""
    modules = project_modules(root, packages)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_names(path, module):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def upward_imports(graph: Mapping[str, set[str]], forbidden: Mapping[str, frozenset[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        layer = module.split(".")[0]
        for target in sorted(targets):
            if target.split(".")[0] in forbidden.get(layer, frozenset()):
                bad.append(f"{module} imports {target}")
    return bad


def circles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted. A package's `__init__`
    importing its own submodules is not a circle by itself: edges from a package to its submodules are ignored."""
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def foreign_imports(path: Path, module: str, allowed: frozenset[str]) -> list[str]:
    return sorted({n.split(".")[0] for n in imported_names(path, module)} - allowed)


# ------------------------------------------------------------------ the project


def test_no_layer_imports_upward() -> None:
    assert upward_imports(import_graph(REPO, PACKAGES), FORBIDDEN) == []


def test_no_import_circles() -> None:
    assert circles(import_graph(REPO, PACKAGES)) == []


@pytest.mark.parametrize("module", sorted(PURE_MATH))
def test_pure_math_modules_import_only_torch_and_the_standard_library(module: str) -> None:
    path = REPO / (module.replace(".", "/") + ".py")
    assert foreign_imports(path, module, PURE_MATH[module]) == []


# ------------------------------------------------------------------ the checker itself


def write_tree(root: Path, files: Mapping[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_an_upward_import_is_reported_even_inside_a_function(tmp_path: Path) -> None:
    write_tree(tmp_path, {
        "core/__init__.py": "", "api/__init__.py": "",
        "core/db.py": "def f():\n    from api.routes import x\n    return x\n",
        "api/routes.py": "from core import db\nx = 1\n",
    })
    graph = import_graph(tmp_path, ("core", "api"))
    assert upward_imports(graph, FORBIDDEN) == ["core.db imports api.routes"]


def test_a_circle_is_reported_and_a_package_importing_its_submodules_is_not(tmp_path: Path) -> None:
    write_tree(tmp_path, {
        "worker/__init__.py": "from worker import stages\n",
        "worker/stages.py": "import worker.eval_stages\n",
        "worker/eval_stages.py": "from .stages import run\n",
        "worker/tasks.py": "from worker.stages import run\n",
    })
    assert circles(import_graph(tmp_path, ("worker",))) == [["worker.eval_stages", "worker.stages"]]


def test_relative_imports_resolve_to_their_package(tmp_path: Path) -> None:
    write_tree(tmp_path, {"api/__init__.py": "", "api/a.py": "from . import b\nfrom ..worker import t\n",
                          "api/b.py": "", "worker/__init__.py": "", "worker/t.py": ""})
    graph = import_graph(tmp_path, ("api", "worker"))
    assert graph["api.a"] == {"api", "api.b", "worker", "worker.t"}  # `from pkg import m` runs pkg's __init__ too


def test_pure_math_check_names_a_foreign_import(tmp_path: Path) -> None:
    path = tmp_path / "losses.py"
    path.write_text("import math\nimport torch\nimport numpy as np\nfrom trace_engine import train\n")
    assert foreign_imports(path, "trace_engine.losses", PURE_MATH["trace_engine.losses"]) == ["numpy",
                                                                                            "trace_engine"]
