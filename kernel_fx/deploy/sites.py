"""Which program nodes each site's code produced: the evidence that the exported program runs what
the report says. Pure: reads an FX graph, changes nothing.

Every node `torch.export` records carries `nn_module_stack` (the module calls it was traced in,
outermost first, as `{key: (path, class)}`) and `stack_trace` (the Python frames that made it). A
node belongs to the innermost site in its stack; it is a kernel node when one of its frames lies in
the files of a kernel variant the export used.

>>> import torch
>>> class Twice(torch.nn.Module):
...     def forward(self, x):
...         return 2 * x
>>> class Model(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.twice = Twice()
...     def forward(self, x):
...         return self.twice(x) + 1
>>> ep = torch.export.export(Model(), (torch.ones(2),))
>>> found = sites_in_program(ep.graph, {"twice": None}, kernel_dirs=())
>>> found["twice"].calls, found["twice"].kernel_nodes
(1, 0)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

# Namespaces whose ops are torch's own: any other op in a program comes from a library someone loaded.
TORCH_NAMESPACES = frozenset({"aten", "prims", "higher_order", "_c10d_functional", "c10d_functional", "quantized_decomposed"})


@dataclass(frozen=True)
class SiteInProgram:
    """What the exported program holds for one site.

    Attributes:
        path: the site's module path, as in the report.
        kernel_dir: the variant directory of the kernel the report says runs there (None: the original).
        calls: the site's calls traced into the program (distinct `nn_module_stack` keys).
        nodes: program nodes that belong to the site (its innermost site is this one).
        kernel_nodes: those made by code in a kernel variant's files.
        ops: custom ops (outside torch's namespaces) among the site's nodes, `namespace::name` -> count.
    """

    path: str
    kernel_dir: str | None
    calls: int = 0
    nodes: int = 0
    kernel_nodes: int = 0
    ops: Mapping[str, int] = field(default_factory=dict)

    @property
    def agrees(self) -> bool:
        """The program runs what the report says: a kernel site's traced calls produced kernel
        nodes, an original site's produced none (a site never called agrees either way)."""
        if self.calls == 0:
            return True
        return self.kernel_nodes > 0 if self.kernel_dir is not None else self.kernel_nodes == 0

    def describe(self) -> str:
        """`kernel: 3 nodes (kfx::op x1)`, `original: 0 kernel nodes`, or `not traced`."""
        if self.calls == 0:
            return "not traced"
        ops = ", ".join(f"{name} x{count}" for name, count in sorted(self.ops.items()))
        if self.kernel_dir is None:
            return f"original: {self.nodes} nodes, {self.kernel_nodes} from kernels"
        return f"kernel: {self.kernel_nodes} of {self.nodes} nodes" + (f" ({ops})" if ops else "")


def custom_op_name(node: torch.fx.Node) -> str | None:
    """`namespace::name` of a node that calls an op outside torch's namespaces, else None."""
    target = node.target
    if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
        return None
    namespace = target.namespace
    return None if namespace in TORCH_NAMESPACES else f"{namespace}::{target._opname}"


def sites_in_program(graph: torch.fx.Graph, sites: Mapping[str, str | None], *, kernel_dirs: Iterable[str],
                     function_hosts: Mapping[str, str] | None = None) -> dict[str, SiteInProgram]:
    """`{path: SiteInProgram}` for `sites` (`{path: kernel variant dir or None}`); `kernel_dirs` are
    the variant directories of every kernel the export used (a node from any of them in an
    original site is a disagreement).

    `function_hosts` maps the sites of marked functions (`kernels`' `use_kernelized_func`) to the
    module whose forward calls them: such a call leaves no `nn_module_stack` entry of its own, so a
    node in the host's own code that came from the function site's kernel files is that site's.
    (An original function site's nodes cannot be told from its host's: it shows as not traced.)"""
    dirs = tuple(sorted({str(Path(d).resolve()) for d in kernel_dirs} | {str(Path(d).resolve()) for d in sites.values() if d}))
    by_host: dict[tuple[str, str], str] = {  # (host path, kernel dir) -> function site
        (host, str(Path(sites[path]).resolve())): path for path, host in (function_hosts or {}).items() if sites.get(path)}
    calls: dict[str, set[str]] = {p: set() for p in sites}
    nodes: Counter[str] = Counter()
    kernel_nodes: Counter[str] = Counter()
    ops: dict[str, Counter[str]] = {p: Counter() for p in sites}
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        stack = node.meta.get("nn_module_stack") or {}
        owner = _innermost_site(stack, sites, calls)
        trace = node.meta.get("stack_trace") or ""
        came_from = [d for d in dirs if f'File "{d}/' in trace]
        if stack and by_host:
            key, (deepest, _cls) = next(reversed(stack.items()))
            function_site = next((by_host[(deepest, d)] for d in came_from if (deepest, d) in by_host), None)
            if function_site is not None:
                owner = function_site
                calls[owner].add(key)
        if owner is None:
            continue
        nodes[owner] += 1
        if came_from:
            kernel_nodes[owner] += 1
        op = custom_op_name(node)
        if op is not None:
            ops[owner][op] += 1
    return {
        path: SiteInProgram(path, None if kernel_dir is None else str(Path(kernel_dir).resolve()), len(calls[path]),
                            nodes[path], kernel_nodes[path], dict(ops[path]))
        for path, kernel_dir in sites.items()
    }


def _innermost_site(stack: Mapping[str, tuple[str, object]], sites: Mapping[str, object], calls: dict[str, set[str]]) -> str | None:
    owner = None
    for key, (path, _cls) in stack.items():
        if path in sites:
            owner = path
            calls[path].add(key)
    return owner
