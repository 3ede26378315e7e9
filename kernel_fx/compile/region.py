"""Run a graph, or one call's region of it, on real values: the helper for any per-site check
that must see numbers (autotune's timings, output checks).

- `run_graph(gm, example_inputs, needed)` runs the graph as dynamo traced it once, eagerly, and
  keeps the values of `needed` nodes. It changes no model state: graph inputs written in place
  are cloned first, and the random number generators are restored afterwards.
- `region_inputs(site)`, `region_graph(site, inputs, values)` and
  `region_with_kernel(substitution, inputs, values)` cut a call's nodes out as a small graph of
  their own, as traced or with the kernel put in exactly as `apply` puts it in the whole graph.
- `moved(substitution, env)` is a substitution for a copy of its graph (autotune's whole-graph variants).
- `isolated()` runs and compiles such small graphs in the middle of dynamo's compile of the big one.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import fx

from ..graph_records import SubstitutionKind
from .apply import apply
from .prepare import Substitution, trace_kernel
from .sites import Site, example_value


class _Capture(fx.Interpreter):
    """Runs a graph, keeping the values of some nodes."""

    def __init__(self, gm: fx.GraphModule, needed: set[fx.Node]) -> None:
        super().__init__(gm)
        self.needed = needed
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n in self.needed:
            self.values[n] = result
        return result


def run_graph(gm: fx.GraphModule, example_inputs: Sequence[Any], needed: set[fx.Node]) -> dict[fx.Node, Any]:
    """The values of `needed`, from one eager run of the graph (not yet rewritten) on real inputs."""
    from torch._subclasses.fake_tensor import FakeTensor

    args = [concrete(x) for x in example_inputs]
    if any(isinstance(a, FakeTensor) for a in args):
        raise ValueError("the example inputs are fake tensors")
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for i in written_inputs(gm, placeholders):  # leave the model's parameters and buffers as they are
        args[i] = args[i].detach().clone(memory_format=torch.preserve_format)
    capture = _Capture(gm, needed)
    with isolated(), torch.no_grad(), rng_restored(args):
        capture.run(*args)
    return capture.values


def concrete(value: Any) -> Any:
    """A symbolic size or scalar dynamo passes as an example input, as the number it stands for."""
    if isinstance(value, torch.SymInt):
        from torch.fx.experimental.symbolic_shapes import optimization_hint

        return optimization_hint(value)
    if isinstance(value, (torch.SymFloat, torch.SymBool)):
        hint = value.node.hint
        if hint is None:
            raise ValueError(f"the example input {value} has no value")
        return hint
    return value


_INPLACE_OPERATORS = frozenset({
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv, operator.imod,
    operator.ipow, operator.iand, operator.ior, operator.ixor, operator.ilshift, operator.irshift,
    operator.imatmul, operator.setitem,
})


def _written(node: fx.Node) -> list[Any]:
    """The values an op writes in place, as far as its spelling tells: `add_`, `x[i] = v`, `+=`,
    `inplace=True`, `out=`, and aten ops whose schema writes an argument."""
    written: list[Any] = []
    if node.op == "call_method":
        name = str(node.target)
        if (name.endswith("_") and not name.startswith("_")) or name == "__setitem__" or (name.startswith("__i") and name.endswith("__")):
            written.append(node.args[0])
    elif node.op == "call_function":
        target = node.target
        name = getattr(target, "__name__", "")
        schema = getattr(target, "_schema", None)
        if target in _INPLACE_OPERATORS or (name.endswith("_") and not name.startswith("_")) or node.kwargs.get("inplace") is True:
            written.append(node.args[0] if node.args else None)
        elif schema is not None and schema.is_mutable:
            for i, arg in enumerate(schema.arguments):
                if arg.alias_info is not None and arg.alias_info.is_write:
                    written.append(node.args[i] if i < len(node.args) else node.kwargs.get(arg.name))
    out = node.kwargs.get("out")
    written.extend(out if isinstance(out, (list, tuple)) else [out])
    return [w for w in written if isinstance(w, fx.Node)]


def written_inputs(gm: fx.GraphModule, placeholders: list[fx.Node]) -> set[int]:
    """Positions of the graph inputs an op may write to, through any chain of first arguments
    (views, getitems): cloning one too many costs memory, one too few would change the model."""
    position = {n: i for i, n in enumerate(placeholders)}
    found: set[int] = set()
    for node in gm.graph.nodes:
        for value in _written(node):
            seen: set[fx.Node] = set()
            while value.op != "placeholder" and value not in seen:
                seen.add(value)
                first = value.args[0] if value.args else None
                if not isinstance(first, fx.Node):
                    break
                value = first
            if value.op == "placeholder":
                found.add(position[value])
            elif value.op == "get_attr":
                raise ValueError(f"{node.format_node()} writes to the graph's attribute {value.target}")
    return found


@contextlib.contextmanager
def rng_restored(values: Sequence[Any]) -> Iterator[None]:
    """Runs here draw no numbers from the model's random streams."""
    devices = sorted({v.device.index or 0 for v in values if isinstance(v, torch.Tensor) and v.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        yield


@contextlib.contextmanager
def isolated() -> Iterator[None]:
    """Run and compile small graphs in the middle of dynamo's compile of the big one as if alone:
    without its tracing context (whose fake mode and guards belong to the big graph), and with
    compile metrics of their own (AOTAutograd's lazy backward compile sets `is_forward` in the
    current metrics context; a second one in dynamo's raises "already been set")."""
    from torch._guards import tracing

    with tracing(None), _own_metrics():
        yield


@contextlib.contextmanager
def _own_metrics() -> Iterator[None]:
    try:
        from torch._dynamo import utils as dynamo_utils
        from torch._dynamo.metrics_context import MetricsContext

        tls = dynamo_utils._metrics_context_tls
    except (ImportError, AttributeError):  # another torch: nothing to isolate, or no way to
        yield
        return
    saved = getattr(tls, "metrics_context", None)
    tls.metrics_context = MetricsContext(on_exit=lambda *args: None)
    try:
        with tls.metrics_context:
            yield
    finally:
        if saved is None:
            del tls.metrics_context
        else:
            tls.metrics_context = saved


# -- a call's region as a graph of its own ------------------------------------------------------


def _copied(site: Site) -> list[fx.Node]:
    """The site's nodes, and its output getitems after the exit marker."""
    members = set(site.nodes)
    return [*site.nodes, *(o for o in site.outputs if o is not None and o not in members)]


def region_inputs(site: Site) -> list[fx.Node]:
    """What the site's nodes read from outside them (graph inputs and attributes count as
    outside), then what a substitution reads: the region graph's inputs, in first-read order."""
    extra = site.binding.read_nodes() if site.binding is not None else []
    copied = _copied(site)
    inside = {n for n in copied if n.op not in ("placeholder", "get_attr")}
    found: dict[fx.Node, None] = {}
    for node in copied:
        if node in inside:
            found.update((a, None) for a in node.all_input_nodes if a not in inside)
        else:
            found[node] = None
    found.update((n, None) for n in extra)
    return list(found)


def region_graph(site: Site, outside: list[fx.Node], values: list[Any]) -> tuple[fx.GraphModule, dict[fx.Node, fx.Node]]:
    """The site's nodes as a graph of their own: inputs `outside`, outputs the call's used
    outputs. Node metadata comes from a run on `values` (dynamo's fake values belong to its own
    fake mode and symbols); returns the graph and where each original node went."""
    graph = fx.Graph()
    env = {n: graph.placeholder(n.name) for n in outside}
    for node in _copied(site):
        if node not in env:
            env[node] = graph.node_copy(node, env.__getitem__)
            env[node].meta = {k: v for k, v in node.meta.items() if k == "nn_module_stack"}
    used = [env[o] for o in site.outputs if o is not None]
    if not used:
        raise ValueError("the call's outputs are unused")
    graph.output(tuple(used))
    gm = fx.GraphModule(torch.nn.Module(), graph)
    _fill_meta(gm, values)
    return gm, env


def _fill_meta(gm: fx.GraphModule, values: list[Any]) -> None:
    """`example_value`/`val` of every node: fake tensors of a fresh fake mode (static shapes)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._pytree import tree_map

    fake_mode = FakeTensorMode()

    def fake(value: Any) -> Any:
        return fake_mode.from_tensor(value) if isinstance(value, torch.Tensor) else value

    class _Meta(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            result = super().run_node(n)
            n.meta["example_value"] = n.meta["val"] = tree_map(fake, result)
            return result

    with torch.no_grad():
        _Meta(gm).run(*[fresh_copy(v, False) for v in values])


def region_with_kernel(sub: Substitution, outside: list[fx.Node], values: list[Any]) -> fx.GraphModule:
    """The region with the kernel substituted the way `apply` does it in the whole graph."""
    gm, env = region_graph(sub.site, outside, values)
    here = moved(sub, env)
    how, traced = sub.how, None
    if how is SubstitutionKind.TRACED:  # retrace on this graph's fake values; a kernel call traces to the same ops
        found = trace_kernel(sub.forward, sub.spec, [example_value(n) for n in here.inputs])
        how, traced = (SubstitutionKind.CALL, None) if isinstance(found, Exception) else (SubstitutionKind.TRACED, found)
    apply(gm, [replace(here, how=how, traced=traced)])
    return gm


def moved(sub: Substitution, env: dict[fx.Node, fx.Node]) -> Substitution:
    """`sub` for a copy of its graph, `env` mapping each node to its copy."""
    site = sub.site

    def move(value: Any) -> Any:
        return env[value] if isinstance(value, fx.Node) else value

    binding = site.binding
    assert binding is not None  # a prepared substitution's site is bound
    moved_binding = replace(
        binding,
        args=tuple(map(move, binding.args)),
        kwargs={k: move(v) for k, v in binding.kwargs.items()},
        outputs=tuple(None if o is None else env[o] for o in binding.outputs),
        tensors={k: env[v] for k, v in binding.tensors.items()},
        scalars={k: env[v] for k, v in binding.scalars.items()},
    )
    moved_site = replace(site, nodes=tuple(env[n] for n in site.nodes), binding=moved_binding)
    return replace(sub, site=moved_site, inputs=tuple(env[n] for n in sub.inputs))


def node_requires_grad(node: fx.Node) -> bool:
    example = example_value(node)
    return isinstance(example, torch.Tensor) and example.requires_grad


def fresh_copy(value: Any, requires_grad: bool) -> Any:
    """A copy to run on: timed graphs may write to their inputs, and must not reach the model's."""
    if not isinstance(value, torch.Tensor):
        return value
    copy = value.detach().clone(memory_format=torch.preserve_format)
    return copy.requires_grad_(requires_grad and (copy.is_floating_point() or copy.is_complex()))
