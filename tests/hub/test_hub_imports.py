"""The hub package's imports: no cycles (function-level imports included), no private names across modules."""

from __future__ import annotations

import ast
from pathlib import Path

HUB = Path(__file__).resolve().parents[2] / "kernel_fx" / "hub"
PACKAGE = "kernel_fx.hub"


def _module_name(path: Path) -> str:
    return PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}"


def _imports(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(absolute module, imported names) for every import statement in `path`, at any depth."""
    package = PACKAGE.split(".")
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.append((module, tuple(alias.name for alias in node.names)))
    return found


def import_graph() -> dict[str, set[str]]:
    """{hub module: hub modules it imports}; `from . import x` counts as importing module `x`."""
    modules = {_module_name(p) for p in HUB.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in HUB.glob("*.py"):
        edges = set()
        for module, names in _imports(path):
            if module in modules and module != PACKAGE:
                edges.add(module)
            edges |= {f"{module}.{n}" for n in names if f"{module}.{n}" in modules}
        graph[_module_name(path)] = edges - {_module_name(path)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, each once, as a path that returns to its start."""
    found, seen = [], set()

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycle = path[path.index(nxt):] + [nxt]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    found.append(cycle)
            else:
                walk(nxt, path + [nxt])

    for start in sorted(graph):
        walk(start, [start])
    return found


def test_no_import_cycles_in_the_hub_package():
    graph = import_graph()
    assert "kernel_fx.hub.resolve" in graph and graph["kernel_fx.hub.resolve"]  # the scan sees imports
    assert cycles(graph) == []


def test_no_private_names_imported_from_other_modules():
    private = [
        f"{path.name}: from {module} import {name}"
        for path in sorted(HUB.glob("*.py"))
        for module, names in _imports(path)
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert private == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
