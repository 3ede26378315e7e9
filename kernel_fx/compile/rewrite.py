"""Put kernels into a graph: prepare each substitution (traces the kernel, touches no graph), then
apply them all, remove every boundary marker, `lint()` and `recompile()`.

A substitution is one of three kinds:
- "traced": the kernel's forward traced with make_fx on the graph's fake values and copied into
  the graph (aten ops inductor can fuse; the AOT cache stays usable). For sites where autograd
  does not record: make_fx works below autograd, so a custom `autograd.Function` would lose its
  backward.
- "call": one node calling the kernel's forward (a `KernelCall`); AOTAutograd traces through it
  with autograd and autocast on. For sites where autograd records, or inside autocast.
- "opaque": the kernel could not be traced (or has `can_torch_compile = False`): one
  `kernel_fx::opaque_kernel` op whose output metadata comes from the original forward.
"""

from __future__ import annotations

import contextlib
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import fx, nn

from ..report import Reason, Rejected
from . import boundary
from .match import Site, _example, _named_tensors
from .standin import CallSpec, KernelCall, ModuleTemplate, Slot

if TYPE_CHECKING:
    from .records import SiteDiff

TRACED, CALL, OPAQUE = "traced", "call", "opaque"


@dataclass(frozen=True)
class Substitution:
    """How one site gets its kernel. `inputs` are the graph values behind `spec`'s slots."""

    site: Site
    how: str
    spec: CallSpec
    inputs: tuple[fx.Node, ...]
    forward: Callable[..., Any]
    original: Callable[..., Any]
    traced: fx.GraphModule | None = None
    why_opaque: Rejected | None = None


class TraceCache:
    """make_fx results per kernel and input signature, so 32 identical layers trace once."""

    def __init__(self) -> None:
        self._entries: dict[tuple, fx.GraphModule | Exception] = {}

    def trace(self, forward: Callable[..., Any], spec: CallSpec, examples: list[Any]) -> fx.GraphModule | Exception:
        key = (forward, _spec_key(spec), tuple(_example_key(e) for e in examples))
        if key not in self._entries:
            self._entries[key] = _trace(forward, spec, examples)
        return self._entries[key]


def prepare(site: Site, kernel: type[nn.Module], original: Callable[..., Any], cache: TraceCache) -> Substitution | Rejected:
    """Decide how `kernel` replaces `site`; the graph is not touched."""
    assert site.module is not None  # match gives every bindable site its module
    inputs: list[fx.Node] = []

    def slot(value: Any) -> Any:
        if isinstance(value, fx.Node):
            inputs.append(value)
            return Slot(len(inputs) - 1)
        if isinstance(value, tuple):  # a tuple of tensors, e.g. (cos, sin)
            return tuple(slot(v) for v in value)
        return value

    args = tuple(slot(a) for a in site.args)
    kwargs = tuple((k, slot(v)) for k, v in site.kwargs.items())
    attrs = tuple((name, slot(node).index) for name, node in [*site.tensors.items(), *site.scalars.items()])
    missing = frozenset(n for n, _ in _named_tensors(site.module)) - set(site.tensors)
    spec = CallSpec(ModuleTemplate.of(site.module, keep_live=missing), args, kwargs, attrs, site.output_spec)
    base = dict(site=site, spec=spec, inputs=tuple(inputs), forward=kernel.forward, original=original)
    if not getattr(kernel, "can_torch_compile", False):
        return _opaque(base, Rejected(Reason.NOT_TRACEABLE, "kernel has can_torch_compile = False; it runs as one opaque op"))
    traced = cache.trace(kernel.forward, spec, [_example(n) for n in inputs])
    if isinstance(traced, Exception):
        return _opaque(base, Rejected(Reason.NOT_TRACEABLE, f"tracing the kernel failed ({type(traced).__name__}: {_first_line(traced)}); it runs as one opaque op"))
    has_constants = any(n.op == "get_attr" for n in traced.graph.nodes)
    how = CALL if site.needs_grad or site.autocast or has_constants else TRACED
    return Substitution(**base, how=how, traced=traced if how == TRACED else None)


def _opaque(base: dict, why: Rejected) -> Substitution | Rejected:
    scalars = [n for n in base["inputs"] if not isinstance(_example(n), torch.Tensor)]
    if scalars:
        return Rejected(Reason.NOT_TRACEABLE, f"{why.detail}, but an opaque op cannot take the symbolic value {scalars[0].name}")
    return Substitution(**base, how=OPAQUE, why_opaque=why)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


# -- tracing --------------------------------------------------------------------------------------


def _trace(forward: Callable[..., Any], spec: CallSpec, examples: list[Any]) -> fx.GraphModule | Exception:
    """make_fx of the kernel on the graph's fake values, in *their* fake mode (dynamo hands the
    backend another one, sharing the ShapeEnv): shape branches become guards of this graph."""
    from torch._subclasses.fake_tensor import FakeTensor
    from torch.fx.experimental.proxy_tensor import make_fx

    def kernel(*flat: Any) -> tuple[torch.Tensor, ...]:
        this, args, kwargs = spec.bind(flat)
        return spec.flatten(forward(this, *args, **kwargs))

    fake_mode = next((e.fake_mode for e in examples if isinstance(e, FakeTensor)), None)
    try:  # "real" under the fake mode, as AOTAutograd traces: symbolic sizes stay symbolic
        with fake_mode if fake_mode is not None else contextlib.nullcontext():
            return make_fx(kernel, tracing_mode="real")(*examples)
    except Exception as exc:  # noqa: BLE001 - any failure means "not traceable": the site goes opaque
        return exc


def _example_key(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return ("t", str(tuple(value.shape)), str(value.stride()), value.dtype, value.device, value.requires_grad)
    return ("v", type(value).__name__, str(value))


def _spec_key(spec: CallSpec) -> tuple:
    return (repr(spec.args), repr(spec.kwargs), spec.attrs, repr(spec.output_spec), _template_key(spec.template))


_MODULE_INTERNALS = frozenset(vars(nn.Module())) | {"forward"}  # hooks, flags; an installed forward


def _template_key(template: ModuleTemplate) -> tuple:
    """What a trace may depend on in the module: plain attributes by value, others by identity."""
    plain = tuple(sorted(
        (k, repr(v) if isinstance(v, (bool, int, float, str, type(None), torch.dtype)) else id(v))
        for k, v in template.attrs.items() if k not in _MODULE_INTERNALS or k == "training"
    ))
    children = tuple(sorted((k, _template_key(c)) for k, c in template.children.items()))
    return (template.cls, plain, template.tensor_names, children)


# -- applying ---------------------------------------------------------------------------------------


def apply(gm: fx.GraphModule, substitutions: list[Substitution]) -> list[SiteDiff]:
    """Substitute in graph order, remove every marker, then `lint()` and `recompile()`.

    Returns each substituted site's ops before and after, for the report."""
    from . import opaque
    from .records import SiteDiff, op_lines

    graph = gm.graph
    diffs: list[SiteDiff] = []
    remap: dict[fx.Node, fx.Node] = {}  # outputs of earlier sites -> the kernel values replacing them
    for sub in sorted(substitutions, key=lambda s: s.site.start):
        site = sub.site
        inputs = [remap.get(n, n) for n in sub.inputs]
        last = site.nodes[-1]
        anchor = last.next  # insert after the whole region: every input is defined by then
        before = op_lines(site.nodes)
        stack = site.nodes[0].meta.get("nn_module_stack")
        with graph.inserting_before(anchor):
            if sub.how == TRACED:
                assert sub.traced is not None
                placeholders = [n for n in sub.traced.graph.nodes if n.op == "placeholder"]
                outs = list(graph.graph_copy(sub.traced.graph, dict(zip(placeholders, inputs))))  # type: ignore[arg-type]
                node = last.next
                while node is not anchor:
                    node.meta.setdefault("example_value", node.meta.get("val"))
                    if stack is not None:
                        node.meta["nn_module_stack"] = dict(stack)
                    node = node.next
            else:
                if sub.how == CALL:
                    target: Any = KernelCall(sub.forward, sub.spec, f"kernel_fx_{site.layer_name}")
                    call = graph.call_function(target, tuple(inputs))
                else:
                    site_id = opaque.register(opaque.OpaqueSite(sub.forward, sub.original, sub.spec), site.layer_name)
                    call = graph.call_function(torch.ops.kernel_fx.opaque_kernel.default, (site_id, inputs))
                examples = tuple(_example(o) for o in _output_values(site))
                call.meta["example_value"] = examples
                outs = []
                for i, example in enumerate(examples):
                    out = graph.call_function(operator.getitem, (call, i))
                    out.meta["example_value"] = example
                    outs.append(out)
                for node in (call, *outs):
                    if stack is not None:
                        node.meta["nn_module_stack"] = dict(stack)
        added, node = [], last.next
        while node is not anchor:
            added.append(node)
            node = node.next
        diffs.append(SiteDiff(site.path, site.call_index, site.layer_name, sub.how, before, op_lines(added)))
        for old, new in zip(site.outputs, outs):
            if old is not None:
                old.replace_all_uses_with(new)
                remap[old] = new
        _erase_dead([*site.nodes, *(o for o in site.outputs if o is not None and o not in site.nodes)], graph)
    strip_markers(graph)
    graph.lint()
    gm.recompile()
    return diffs


def _output_values(site: Site) -> list[Any]:
    """The values the original call returned, one per tensor output."""
    if site.marked:
        return list(site.nodes[-1].args[1:])
    return list(site.outputs)


def _erase_dead(nodes: list[fx.Node], graph: fx.Graph) -> None:
    """Erase, last first, the nodes of a replaced region that nothing reads any more. Nodes still
    read from outside (a symbolic size dynamo reuses later) stay, with what they need."""
    _unalias(graph, [n for n in nodes if n.op == "call_function" and n.target is boundary.enter])
    seen: set[fx.Node] = set()
    for node in reversed(nodes):
        if node in seen or getattr(node, "_erased", False):
            continue
        seen.add(node)
        if not node.users and node.op not in ("placeholder", "output"):
            graph.erase_node(node)


def _unalias(graph: fx.Graph, markers: list[fx.Node]) -> None:
    """Let every user of a marker's alias read the marker's input instead."""
    for marker in markers:
        if marker.target is boundary.enter:
            kinds = boundary.value_kinds(marker.args[0][2])
            sources = [v for kind, v in zip(kinds, marker.args[1:]) if kind == boundary.TENSOR]
        else:
            sources = list(marker.args[1:])
        for user in list(marker.users):
            if user.op == "call_function" and user.target is operator.getitem and isinstance(user.args[1], int):
                user.replace_all_uses_with(sources[user.args[1]])
                graph.erase_node(user)


def strip_markers(graph: fx.Graph) -> None:
    """Remove every boundary marker left in `graph` (calls not substituted, partial calls)."""
    markers = [n for n in graph.nodes if n.op == "call_function" and boundary.is_marker(n.target)]
    _unalias(graph, markers)
    for marker in reversed(markers):
        if not marker.users:
            graph.erase_node(marker)
