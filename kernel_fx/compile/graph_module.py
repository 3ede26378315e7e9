"""The GraphModule path, for users who want a `GraphModule` rather than torch.compile: trace with
extensible modules kept as `call_module` leaves, then substitute kernels on those nodes, planned by
the same `Planner` and recorded in the same `Report` as the other paths.

>>> import torch
>>> from torch import nn
>>> import kernel_fx
>>> @kernel_fx.use_kernel_forward_from_hub("Double")
... class Double(nn.Module):
...     def forward(self, x):
...         return 2 * x
>>> class Net(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.twice = Double()
...     def forward(self, x):
...         return self.twice(x) + 1
>>> gm = symbolic_trace(Net())
>>> print(gm.code.strip())  # before: the extensible layer is one call_module node
def forward(self, x):
    twice = self.twice(x);  x = None
    add = twice + 1;  twice = None
    return add
>>> gm = kernelize_graph(gm, device="cpu")  # no mapping here, so nothing changes
>>> graph_report(gm).summary()
'1 site: 0 kernel, 1 original (no mapping: 1)'

With a kernel mapped for "Double", the call_module node is replaced by the kernel's forward,
traced into the graph with `self.<param>` read through `get_attr` nodes (or, where the kernel
cannot be traced, by one call of the kernel bound to the module).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn

from ..checks import SHARED_CHECKS, Check, CheckSettings, Verdict, ordered, run_checks
from ..checks.verification import describe, fake_output
from ..conditions import Condition
from ..decisions import DISABLED, Decision, Outcome, Reason, Rejected, raise_unless_allowed
from ..devices import Device, model_device
from ..errors import KernelFxError
from ..graph_records import GraphRecord, GraphSnapshot
from ..layers import layer_name_of
from ..modes import Mode, check_kernelize_mode
from ..planner import KernelPlan, Planner, build_decision, is_disabled
from ..report import Report
from .standin import ModuleTemplate, StandIn, named_tensors

REPORT_KEY = "kernel_fx_report"


class KernelTracer(fx.Tracer):
    """An `fx.Tracer` that keeps every extensible module as a `call_module` leaf."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return layer_name_of(m) is not None or super().is_leaf_module(m, module_qualified_name)


def symbolic_trace(model: nn.Module, concrete_args: dict[str, Any] | None = None) -> fx.GraphModule:
    """`torch.fx.symbolic_trace`, with extensible modules kept as leaves."""
    tracer = KernelTracer()
    graph = tracer.trace(model, concrete_args)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def kernelize_graph(gm: fx.GraphModule, *, mode: Mode | None = None, device: str | torch.device | None = None,
                    use_fallback: bool = True, example_inputs: Sequence[Any] | None = None,
                    checks: Sequence[Check] = ()) -> fx.GraphModule:
    """Substitute, in place, the kernel of every extensible `call_module` node that has one.

    Decided once, like `kernelize(..., mode=...)`: `mode` defaults to TRAINING when `gm` is
    training, else INFERENCE. The record is `graph_report(gm)`.

    Every node runs the checks every path runs (`kernel_fx.checks.SHARED_CHECKS`, plus `checks`)
    on fake values: those of `example_inputs` propagated through the graph (the original modules
    run on fakes once, here), or the nodes' own `meta["val"]` (graphs from make_fx or export).
    A graph with neither has nothing to compare, and its kernels go in unchecked.
    """
    start = time.perf_counter()
    mode = check_kernelize_mode(mode if mode is not None else (Mode.TRAINING if gm.training else Mode.INFERENCE))
    target_device = Device.parse(device if device is not None else model_device(gm))
    planner = Planner(target_device, None)
    condition = Condition.static(mode)
    pipeline = ordered((*SHARED_CHECKS, *checks))
    if example_inputs is not None:
        _propagate_fakes(gm, example_inputs)
    before = GraphSnapshot.of(gm, keep=True)
    decisions = []
    calls: dict[str, int] = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        module = gm.get_submodule(str(node.target))
        layer_name = layer_name_of(module)
        if layer_name is None:
            continue
        index = calls.get(str(node.target), 0)
        calls[str(node.target)] = index + 1
        decision = _substitute(gm, node, module, layer_name, planner, condition, target_device, index, pipeline)
        if not use_fallback and decision.outcome is Outcome.ORIGINAL:
            raise_unless_allowed(decision.rejected, f"{node.target} (layer {layer_name!r}) in mode {mode!s}",
                                 "Pass use_fallback=True to keep the original forward.")
        decisions.append(decision)
    gm.graph.lint()
    gm.recompile()
    record = GraphRecord(0, None, before, GraphSnapshot.of(gm), decisions, inner="fx")
    record.pass_seconds = time.perf_counter() - start
    gm.meta[REPORT_KEY] = Report(decisions, [record])
    return gm


def graph_report(gm: fx.GraphModule) -> Report:
    """The report of the last `kernelize_graph(gm)`."""
    report = gm.meta.get(REPORT_KEY)
    if report is None:
        raise KernelFxError("This GraphModule has not been through kernel_fx.compile.graph_module.kernelize_graph yet.")
    return report


def _substitute(gm: fx.GraphModule, node: fx.Node, module: nn.Module, layer_name: str, planner: Planner,
                condition: Condition, device: Device, call_index: int, pipeline: Sequence[Check]) -> Decision:
    def decision(outcome: Outcome, rejected: Rejected | None, plan: KernelPlan | None = None, verdict: Verdict | None = None) -> Decision:
        return build_decision(
            path=str(node.target), layer_name=layer_name, module_class=type(module).__name__, device=str(device),
            mode=str(condition.mode), outcome=outcome, plan=plan, rejected=rejected, call_index=call_index, path_kind="fx",
            verdict=verdict,
        )

    if is_disabled():
        return decision(Outcome.ORIGINAL, DISABLED)
    plan = planner.plan(module, layer_name, condition)
    if plan.kernel is None:
        return decision(Outcome.ORIGINAL, plan.rejected, plan)
    verdict = run_checks(pipeline, FxCall(node, module, layer_name, plan.kernel), "fx")
    if verdict.rejected is not None:
        return decision(Outcome.ORIGINAL, verdict.rejected, plan, verdict)
    traced = _traced(gm, node, module, plan.kernel.forward)
    if isinstance(traced, Exception):
        with gm.graph.inserting_before(node):
            replacement = gm.graph.call_function(BoundKernel(plan.kernel.forward, module, layer_name), node.args, node.kwargs)
        outcome, rejected = Outcome.OPAQUE_KERNEL, Rejected(
            Reason.NOT_TRACEABLE, f"FX could not trace the kernel ({type(traced).__name__}: {traced}); it runs as one call")
    else:
        replacement, outcome, rejected = traced, Outcome.KERNEL, None
    node.replace_all_uses_with(replacement)
    gm.graph.erase_node(node)
    return decision(outcome, rejected, plan, verdict)


class FxCall:
    """A `call_module` node as the checks see it (a `kernel_fx.checks.Subject` of the fx path): the
    original's output is the node's fake value, the kernel's is its forward run on the fake values
    of the node's arguments."""

    path_kind = "fx"

    def __init__(self, node: fx.Node, module: nn.Module, layer_name: str, kernel: type) -> None:
        self.node, self.module, self.layer_name, self.kernel = node, module, layer_name, kernel
        self.settings = CheckSettings(outputs=True, verify=None)
        self.args = fx.node.map_aggregate(node.args, _fake_of)
        self.kwargs = fx.node.map_aggregate(node.kwargs, _fake_of)
        self.inputs = describe(tuple(self.args), dict(self.kwargs)) if self._known() else ""

    def _known(self) -> bool:
        return self.node.meta.get("val") is not None and _NO_FAKE not in fx.node.map_aggregate((self.args, self.kwargs), lambda v: v)

    def expected(self) -> Any:
        return self.node.meta.get("val") if self._known() else None

    def actual(self) -> Any:
        if not self._known():
            return None
        return fake_output(self.kernel.forward, self.module, tuple(self.args), dict(self.kwargs))

    def measure(self) -> None:
        return None  # fake values only: no numbers to compare


_NO_FAKE = object()


def _fake_of(value: Any) -> Any:
    if isinstance(value, fx.Node):
        found = value.meta.get("val")
        return _NO_FAKE if found is None else found
    return value


def _propagate_fakes(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> None:
    """Every node's fake value in `meta["val"]`, from fakes of `example_inputs` (nothing computed)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fakes = [mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in example_inputs]
    FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*fakes)


def _traced(gm: fx.GraphModule, node: fx.Node, module: nn.Module, forward: Callable[..., Any]) -> fx.Node | Exception:
    """The kernel's forward traced into `gm` before `node`; on failure, what went wrong (the
    graph is left as it was)."""
    graph = gm.graph
    tracer = fx.proxy.GraphAppendingTracer(graph)
    first_new = node.prev
    try:
        with graph.inserting_before(node):
            values = {name: fx.Proxy(graph.get_attr(f"{node.target}.{name}"), tracer) for name, _ in named_tensors(module)}
            this = StandIn(ModuleTemplate.of(module), values)
            args = fx.node.map_aggregate(node.args, lambda a: fx.Proxy(a, tracer) if isinstance(a, fx.Node) else a)
            kwargs = fx.node.map_aggregate(node.kwargs, lambda a: fx.Proxy(a, tracer) if isinstance(a, fx.Node) else a)
            out = forward(this, *args, **kwargs)  # type: ignore[arg-type]
            return _as_node(graph, out)
    except Exception as exc:  # noqa: BLE001 - control flow on proxies and the like: fall back to one call
        _erase_between(graph, first_new, node)
        return exc


def _as_node(graph: fx.Graph, out: Any) -> fx.Node:
    if isinstance(out, fx.Proxy):
        return out.node
    if isinstance(out, (tuple, list)):
        return graph.call_function(type(out), ([_as_node(graph, o) if isinstance(o, (fx.Proxy, tuple, list)) else o for o in out],))
    raise KernelFxError(f"the kernel returned {type(out).__name__}, which is not a traced value")


def _erase_between(graph: fx.Graph, first: fx.Node, stop: fx.Node) -> None:
    created = []
    cur = first.next
    while cur is not stop:
        created.append(cur)
        cur = cur.next
    for n in reversed(created):
        graph.erase_node(n)


class BoundKernel:
    """A graph target calling a kernel's forward with the real module as `self` (eager only)."""

    def __init__(self, forward: Callable[..., Any], module: nn.Module, name: str) -> None:
        self.forward = forward
        self.module = module
        self.__name__ = self.__qualname__ = f"kernel_{name}"
        self.__module__ = __name__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(self.module, *args, **kwargs)
