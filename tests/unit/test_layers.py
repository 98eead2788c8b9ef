"""The layering of ``serve_app`` (docs/architecture.md#layers), checked from the imports.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a
lazy import still ties two modules together. A module may import its own package and
any package of a lower layer, never one of its own layer or above; and no two modules
import each other, directly or around a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "serve_app"

LAYERS: list[tuple[str, ...]] = [
    ("serve_app", "serve_app.errors", "serve_app.constants", "serve_app.schema_base"),
    ("serve_app.protocol", "serve_app.repository", "serve_app.jobs"),
    ("serve_app.models",),
    ("serve_app.graph",),
    ("serve_app.config",),
    ("serve_app.deploy",),
    ("serve_app.server",),
    ("serve_app.app", "serve_app.local"),
    ("serve_app.k8s",),
    ("serve_app.cli",),
]
"""Lowest first. Keep docs/architecture.md#layers in step with this list."""


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package at ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                targets.append(candidate if candidate in modules else base)
    found = set()
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name and not name.startswith(target + "."):
            found.add(target)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    modules = module_files(root)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def unit_of(module: str) -> str:
    """The layer entry (package or top-level module) a module belongs to."""
    units = [u for layer in LAYERS for u in layer]
    # The root package's own unit is its __init__ only; its submodules need a layer.
    matches = [u for u in units if module == u or ("." in u and module.startswith(u + "."))]
    if not matches:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and the doc")
    return max(matches, key=len)


def layer_of(unit: str) -> int:
    """Index of the layer that holds ``unit``."""
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a unit of the same layer or above (own package excepted)."""
    out = []
    for module, targets in sorted(graph.items()):
        unit = unit_of(module)
        for target in sorted(targets):
            other = unit_of(target)
            if other != unit and layer_of(other) >= layer_of(unit):
                out.append(f"{module} imports {target} ({other} is not below {unit})")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles() -> None:
    assert cycles(import_graph()) == []


def test_no_import_from_a_lower_layer_up() -> None:
    assert layer_violations(import_graph()) == []


def test_every_module_has_a_layer() -> None:
    for module in import_graph():
        unit_of(module)


def test_top_level_holds_packages_and_a_handful_of_modules() -> None:
    modules = sorted(p.stem for p in ROOT.glob("*.py") if p.stem != "__init__")
    assert modules == ["app", "cli", "constants", "errors", "schema_base"]


def test_every_package_says_what_lives_there_and_what_it_may_import() -> None:
    for init in sorted(ROOT.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert "May import" in doc, f"{init.relative_to(ROOT.parent)} lacks 'May import:'"


def test_the_checks_catch_a_circle_and_an_upward_import(tmp_path: Path) -> None:
    pkg = tmp_path / "serve_app"
    (pkg / "graph").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("from serve_app.graph import spec\n")
    (pkg / "graph" / "__init__.py").write_text("")
    (pkg / "graph" / "spec.py").write_text("def f():\n    from .structure import g\n    return g\n")
    (pkg / "graph" / "structure.py").write_text("from serve_app.graph.spec import f\n")
    graph = import_graph(pkg)
    assert cycles(graph) == [["serve_app.graph.spec", "serve_app.graph.structure"]]
    assert layer_violations(graph) == [
        "serve_app.errors imports serve_app.graph.spec "
        "(serve_app.graph is not below serve_app.errors)"
    ]
    with pytest.raises(AssertionError, match="in no layer"):
        unit_of("serve_app.elsewhere")
