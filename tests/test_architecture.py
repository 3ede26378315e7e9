"""The package's shape: no import cycles (function-level imports included), no private name
imported from another module, and the layering the folders show —

    public face   kernel_fx/__init__.py, explain, deploy/, cli*, demo/, integrations/
    paths         eager/ (kernelize)   compile/ (hubkernels, kernelize_graph)   — siblings
    checks        checks/ (the pipeline every path runs)
    core          planner, mapping, repos, hub/, layers, markers, decisions, report, ...

each layer importing only the layers below it: neither path imports the other, the checks and
the core import no path, and the core does not import the checks' package machinery except
through the markers' trace-time hook (`checks.calls`)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "kernel_fx"
SOURCES = sorted(p for p in ROOT.rglob("*.py") if "kernels" not in p.relative_to(ROOT).parts)
# Above both paths, so free to use them: the public API, which re-exports the backend lazily
# (`import kernel_fx` stays cheap), `explain`, the dry run of both paths, and the command line,
# demo and integrations, which use the public API.
COMPILE_IMPORTERS_ALLOWED = {"kernel_fx", "kernel_fx.explain"}
PUBLIC_FACE = ("kernel_fx", "kernel_fx.explain", "kernel_fx.deploy", "kernel_fx.cli", "kernel_fx.cli_hub", "kernel_fx.demo", "kernel_fx.integrations")
PATHS = ("kernel_fx.eager", "kernel_fx.compile")


def layer_of(module: str) -> str:
    """"face", "eager", "compile", "checks" or "core"."""
    if module == "kernel_fx" or any(module == f or module.startswith(f + ".") for f in PUBLIC_FACE[1:]):
        return "face"
    for package in (*PATHS, "kernel_fx.checks"):
        if module == package or module.startswith(package + "."):
            return package.removeprefix("kernel_fx.")
    return "core"


def module_name(path: Path) -> str:
    parts = ["kernel_fx", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imports(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(absolute module, imported names) for every import statement in `path`, at any depth."""
    name = module_name(path)
    package = name.split(".") if is_package(path) else name.split(".")[:-1]
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
    """{module: kernel_fx modules it imports}; packages' `__init__` are not targets (a re-export
    is not a dependency on every module behind it); `from . import x` imports module `x`."""
    modules = {module_name(p) for p in SOURCES if not is_package(p)}
    graph: dict[str, set[str]] = {}
    for path in SOURCES:
        edges = set()
        for module, names in imports(path):
            if module in modules:
                edges.add(module)
            edges |= {f"{module}.{n}" for n in names if f"{module}.{n}" in modules}
        graph[module_name(path)] = edges - {module_name(path)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, each once, as a path that returns to its start."""
    found, seen = [], set()

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycle = path[path.index(nxt):] + [nxt]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    found.append(cycle)
            elif nxt not in done:
                walk(nxt, path + [nxt])
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        walk(start, [start])
    return found


def test_no_import_cycles():
    graph = import_graph()
    assert graph["kernel_fx.eager.kernelize"] >= {"kernel_fx.planner", "kernel_fx.decisions"}  # the scan sees imports
    assert cycles(graph) == []


def test_no_private_names_imported_from_other_modules():
    private = [
        f"{module_name(path)}: from {module} import {name}"
        for path in SOURCES
        for module, names in imports(path)
        for name in names
        if module.startswith("kernel_fx") and name.startswith("_") and not name.startswith("__")
    ]
    assert private == []


def test_nothing_outside_compile_imports_it():
    importers = {
        module_name(path)
        for path in SOURCES
        if not module_name(path).startswith("kernel_fx.compile")
        for module, names in imports(path)
        if module.startswith("kernel_fx.compile") or (module == "kernel_fx" and "compile" in names)
    }
    assert importers <= COMPILE_IMPORTERS_ALLOWED


# Which layers each layer may import (its own included).
ALLOWED = {
    "face": {"face", "eager", "compile", "checks", "core"},
    "eager": {"eager", "checks", "core"},
    "compile": {"compile", "checks", "core"},
    "checks": {"checks", "core"},
    "core": {"core", "checks"},  # markers runs the trace-time checks (checks.calls); nothing else
}


def test_each_layer_imports_only_the_layers_below_it():
    graph = import_graph()
    wrong = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer_of(b) not in ALLOWED[layer_of(a)])
    assert wrong == []


def test_the_core_uses_the_checks_only_for_trace_time_calls():
    graph = import_graph()
    users = sorted(a for a, targets in graph.items() if layer_of(a) == "core" for b in targets if layer_of(b) == "checks")
    assert set(users) <= {"kernel_fx.markers", "kernel_fx.planner"}  # the hook; the planner records verdicts


def test_the_paths_are_sibling_packages():
    graph = import_graph()
    assert not any(b.startswith("kernel_fx.compile") for a, t in graph.items() if a.startswith("kernel_fx.eager") for b in t)
    assert not any(b.startswith("kernel_fx.eager") for a, t in graph.items() if a.startswith("kernel_fx.compile") for b in t)
    assert graph["kernel_fx.compile.decide"] >= {"kernel_fx.planner"}
    assert graph["kernel_fx.eager.forwards"] >= {"kernel_fx.checks.calls"}
    assert graph["kernel_fx.checks.calls"] >= {"kernel_fx.checks.pipeline"}


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
