"""What the backend did to one graph, as data: code and op counts before and after, the nodes
removed and added, and a decision per site. `Report.graphs` holds these; rendering is elsewhere.

>>> import torch
>>> gm = torch.fx.symbolic_trace(lambda x: torch.relu(x) + 1)
>>> snap = GraphSnapshot.of(gm)
>>> snap.ops
{'torch.relu': 1, 'operator.add': 1}
>>> print(snap.code)
def forward(self, x):
    relu = torch.relu(x);  x = None
    add = relu + 1;  relu = None
    return add
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from torch import fx

from . import markers
from .decisions import Decision


def target_name(node: fx.Node) -> str:
    """A readable name for what a node calls: `torch.rsqrt`, `operator.mul`, `Tensor.pow`, ..."""
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if node.op == "call_module":
        return f"module:{node.target}"
    target = node.target
    name = getattr(target, "__name__", None)
    if hasattr(target, "_schema") or type(target).__name__ == "OpOverload":  # torch.ops.ns.op.overload
        return str(target)
    module = getattr(target, "__module__", None) or ""
    if module.startswith("torch._C") or module == "torch.functional":
        module = "torch"
    if module == "_operator":
        module = "operator"
    return f"{module}.{name}" if module and name else str(name or target)


def _op_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module") and not _is_marker_node(n)]


def _is_marker_node(node: fx.Node) -> bool:
    if node.op != "call_function":
        return False
    if markers.is_marker(node.target):
        return True
    source = node.args[0] if node.target is operator.getitem and node.args else None
    return isinstance(source, fx.Node) and source.op == "call_function" and markers.is_marker(source.target)


def _arg(value: Any) -> str:
    if isinstance(value, fx.Node):
        return value.name
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_arg(v) for v in value)
        return f"({inner},)" if isinstance(value, tuple) and len(value) == 1 else f"[{inner}]" if isinstance(value, list) else f"({inner})"
    return repr(value)


def op_lines(nodes: Any) -> tuple[str, ...]:
    """The op nodes among `nodes` as readable lines: `rsqrt = torch.rsqrt(add)`."""
    lines = []
    for node in nodes:
        if node.op not in ("call_function", "call_method", "call_module") or _is_marker_node(node):
            continue
        args = [_arg(a) for a in node.args] + [f"{k}={_arg(v)}" for k, v in node.kwargs.items()]
        lines.append(f"{node.name} = {target_name(node)}({', '.join(args)})")
    return tuple(lines)


class SubstitutionKind(str, Enum):
    """How a kernel was put into a graph at one site."""

    TRACED = "traced"  # the kernel's forward traced to aten ops and copied in (fusable)
    CALL = "call"  # one node calling the kernel's forward; AOTAutograd traces through it
    OPAQUE = "opaque"  # one opaque custom op: the kernel could not be traced
    TRACE_TIME = "at trace time"  # dynamo traced the kernel's forward instead of the original's (a call carrying state)


@dataclass(frozen=True)
class SiteDiff:
    """One substituted call: its ops before, and what replaced them."""

    path: str
    call_index: int
    layer_name: str
    how: SubstitutionKind
    before: tuple[str, ...]
    after: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "call_index": self.call_index, "layer_name": self.layer_name, "how": self.how.value,
                "before": list(self.before), "after": list(self.after)}


@dataclass(frozen=True)
class AutotuneResult:
    """One group of sites (a layer name) decided by `autotune=True` from whole-graph timings:
    the graph's median in milliseconds with the group's kernels (`kernel_ms`) and without them
    (`original_ms`; None when no variant without them was timed), every variant compiled by the
    inner compiler; `kept` when the group's kernels run. `shapes` names the two variants compared;
    `sites` the calls this decided (`path #call`); `note` says why a group was not timed.

    >>> r = AutotuneResult("SiluAndMul", "every kernel vs no kernel", 0.02, 0.05, True, ("mlp.act #0",))
    >>> round(r.speedup, 2), r.as_dict()["timed"]
    (2.5, 'forward')
    """

    kernel: str
    shapes: str
    kernel_ms: float | None
    original_ms: float | None
    kept: bool
    sites: tuple[str, ...]
    timed: str = "forward"
    note: str = ""

    @property
    def speedup(self) -> float | None:
        """original_ms / kernel_ms: above 1 when the kernel is faster."""
        if self.kernel_ms is None or self.original_ms is None or self.kernel_ms <= 0:
            return None
        return self.original_ms / self.kernel_ms

    def as_dict(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "shapes": self.shapes, "timed": self.timed, "kernel_ms": self.kernel_ms,
                "original_ms": self.original_ms, "speedup": self.speedup, "kept": self.kept,
                "sites": list(self.sites), "note": self.note}


@dataclass(frozen=True)
class VariantTiming:
    """One whole-graph variant `autotune=True` compiled and timed.

    Attributes:
        name: "every kernel" (the default pass), "no kernel" (the inner compiler alone) or
            "without <layer name>".
        without: the layer names whose kernels this variant leaves out.
        compile_s: seconds the inner compiler took (with the warm-up runs); None if not compiled.
        ms: median milliseconds of one run; None if not timed.
        timed: "forward" or "forward+backward".
        chosen: the variant the graph is compiled as.
        note: why it was not compiled or timed (the compile budget, an error).
    """

    name: str
    without: tuple[str, ...] = ()
    compile_s: float | None = None
    ms: float | None = None
    timed: str = "forward"
    chosen: bool = False
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "without": list(self.without), "compile_s": self.compile_s, "ms": self.ms,
                "timed": self.timed, "chosen": self.chosen, "note": self.note}


class GraphSnapshot:
    """One state of a graph: its code, op counts per target, and its op nodes as `name: target`.

    kernel_fx's own boundary markers (and their getitems) are left out of the code and the
    counts: they are not the model's ops, and the pass always removes them. The code is
    generated when first read.
    """

    def __init__(self, ops: dict[str, int], nodes: dict[str, str], code: str | None = None, graph: fx.Graph | None = None) -> None:
        self.ops = ops
        self.nodes = nodes
        self._code = code
        self._graph = graph

    @classmethod
    def of(cls, gm: fx.GraphModule, keep: bool = False) -> GraphSnapshot:
        """The graph as it is now. `keep=True` copies the graph (its code is rendered later, the
        graph may change meanwhile); otherwise the code is read now."""
        ops = _op_nodes(gm)
        counts = dict(Counter(target_name(n) for n in ops))
        names = {n.name: target_name(n) for n in ops}
        if keep:
            graph = fx.Graph()
            graph.output(graph.graph_copy(gm.graph, {}))  # graph_copy leaves the output node out
            markers.strip_markers(graph)
            return cls(counts, names, graph=graph)
        return cls(counts, names, code=gm.code.strip())

    @property
    def code(self) -> str:
        if self._code is None:
            assert self._graph is not None
            self._code = self._graph.python_code("self").src.strip()
            self._graph = None
        return self._code


@dataclass
class GraphRecord:
    """The hubkernels pass over one graph dynamo handed over."""

    index: int
    compile_id: str | None
    before: GraphSnapshot
    after: GraphSnapshot
    decisions: list[Decision] = field(default_factory=list)
    pass_seconds: float = 0.0
    inner: str = ""
    site_diffs: list[SiteDiff] = field(default_factory=list)
    autotune: list[AutotuneResult] = field(default_factory=list)
    autotune_variants: list[VariantTiming] = field(default_factory=list)  # autotune=True: every whole-graph variant
    autotune_note: str | None = None  # autotune=True: why nothing was timed, or which variants the budget left out

    @property
    def nodes_removed(self) -> list[str]:
        return [f"{name}: {t}" for name, t in self.before.nodes.items() if self.after.nodes.get(name) != t]

    @property
    def nodes_added(self) -> list[str]:
        return [f"{name}: {t}" for name, t in self.after.nodes.items() if self.before.nodes.get(name) != t]

    @property
    def op_delta(self) -> dict[str, int]:
        """Per target: count after minus count before, for the targets that changed."""
        keys = sorted({*self.before.ops, *self.after.ops})
        delta = {k: self.after.ops.get(k, 0) - self.before.ops.get(k, 0) for k in keys}
        return {k: v for k, v in delta.items() if v}

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "compile_id": self.compile_id,
            "inner": self.inner,
            "pass_seconds": self.pass_seconds,
            "code_before": self.before.code,
            "code_after": self.after.code,
            "ops_before": dict(self.before.ops),
            "ops_after": dict(self.after.ops),
            "op_delta": self.op_delta,
            "nodes_removed": self.nodes_removed,
            "nodes_added": self.nodes_added,
            "decisions": [d.as_dict() for d in self.decisions],
            "site_diffs": [d.as_dict() for d in self.site_diffs],
            "autotune": [r.as_dict() for r in self.autotune],
            "autotune_variants": [v.as_dict() for v in self.autotune_variants],
            "autotune_note": self.autotune_note,
        }
