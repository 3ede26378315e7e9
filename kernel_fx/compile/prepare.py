"""Prepare a site's substitution: decide how its kernel goes into the graph and trace it. Pure:
the graph is not touched (`apply` does that).

A substitution is one of three kinds (`SubstitutionKind`):
- TRACED: the kernel's forward traced with make_fx on the graph's fake values, to be copied into
  the graph (aten ops inductor can fuse; the AOT cache stays usable). For sites where autograd
  does not record: make_fx works below autograd, so a custom `autograd.Function` would lose its
  backward.
- CALL: one node calling the kernel's forward (a `KernelCall`); AOTAutograd traces through it
  with autograd and autocast on. For sites where autograd records, or inside autocast.
- OPAQUE: the kernel could not be traced (or has `can_torch_compile = False`): one
  `kernel_fx::opaque_kernel` op whose output metadata comes from the original forward. What the
  op cannot express is refused here (see `opaque.py`): an output aliasing an input that is
  written later, and any write when autograd records (its backward re-runs the kernel).
"""

from __future__ import annotations

import contextlib
import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import fx, nn

from ..decisions import Reason, Rejected
from ..dtensor import NATIVE, dtensor_mode, is_dtensor, run_local
from ..graph_records import SubstitutionKind
from . import opaque
from .sites import Site, example_value
from .standin import CallSpec, InputRef, ModuleTemplate, named_tensors, standin_tensors


@dataclass(frozen=True)
class Substitution:
    """How one site gets its kernel. `inputs` are the graph values behind `spec`'s slots."""

    site: Site
    how: SubstitutionKind
    spec: CallSpec
    inputs: tuple[fx.Node, ...]
    forward: Callable[..., Any]
    original: Callable[..., Any]
    traced: fx.GraphModule | None = None
    why_opaque: Rejected | None = None
    written: tuple[int, ...] = ()  # OPAQUE: the input slots the kernel writes in place
    effects_known: bool = True  # OPAQUE: found on fake values (else checked on the first real call)


class TraceCache:
    """make_fx results per kernel and input signature, so 32 identical layers trace once."""

    def __init__(self) -> None:
        self._entries: dict[tuple, fx.GraphModule | Exception] = {}

    def trace(self, forward: Callable[..., Any], spec: CallSpec, examples: list[Any]) -> fx.GraphModule | Exception:
        key = (forward, spec_key(spec), tuple(example_key(e) for e in examples))
        if key not in self._entries:
            self._entries[key] = trace_kernel(forward, spec, examples)
        return self._entries[key]


def prepare(site: Site, kernel: type[nn.Module], original: Callable[..., Any], cache: TraceCache) -> Substitution | Rejected:
    """How `kernel` replaces `site` (a bound site: module and binding found); the graph is not touched."""
    if site.module is None or site.binding is None:
        raise ValueError(f"site {site.path!r} is not bound; only bound sites are prepared")
    binding = site.binding
    inputs: list[fx.Node] = []

    def ref(value: Any) -> Any:
        if isinstance(value, fx.Node):
            inputs.append(value)
            return InputRef(len(inputs) - 1)
        if isinstance(value, tuple):  # a tuple of tensors, e.g. (cos, sin)
            return tuple(ref(v) for v in value)
        return value

    args = tuple(ref(a) for a in binding.args)
    kwargs = tuple((k, ref(v)) for k, v in binding.kwargs.items())
    attrs = tuple((name, ref(node).index) for name, node in [*binding.tensors.items(), *binding.scalars.items()])
    missing = frozenset(n for n, _ in named_tensors(site.module)) - set(binding.tensors)
    spec = CallSpec(ModuleTemplate.of(site.module, keep_live=missing), args, kwargs, attrs, binding.output_spec)

    def substitution(how: SubstitutionKind, traced: fx.GraphModule | None = None, why_opaque: Rejected | None = None) -> Substitution:
        return Substitution(site, how, spec, tuple(inputs), kernel.forward, original, traced, why_opaque)

    if any(is_dtensor(example_value(n)) for n in inputs):  # the dtensor_inputs check allowed it
        # one call AOTAutograd traces with the DTensors, on their local shards when the kernel says so
        if dtensor_mode(kernel) == NATIVE:
            return substitution(SubstitutionKind.CALL)
        return replace(substitution(SubstitutionKind.CALL), forward=functools.partial(_on_local_shards, kernel.forward))
    if not getattr(kernel, "can_torch_compile", False):
        return _opaque(site, spec, substitution, inputs, Rejected(Reason.NOT_TRACEABLE, "kernel has can_torch_compile = False; it runs as one opaque op"))
    traced = cache.trace(kernel.forward, spec, [example_value(n) for n in inputs])
    if isinstance(traced, Exception):
        return _opaque(site, spec, substitution, inputs, Rejected(
            Reason.NOT_TRACEABLE, f"tracing the kernel failed ({type(traced).__name__}: {first_line(traced)}); it runs as one opaque op"))
    has_constants = any(n.op == "get_attr" for n in traced.graph.nodes)
    if site.needs_grad or site.context.autocast or has_constants:
        return substitution(SubstitutionKind.CALL)
    return substitution(SubstitutionKind.TRACED, traced)


def _on_local_shards(kernel_forward: Callable[..., Any], this: Any, *args: Any, **kwargs: Any) -> Any:
    return run_local(kernel_forward, this, standin_tensors(this), args, kwargs)


def _opaque(site: Site, spec: CallSpec, substitution: Callable[..., Substitution], inputs: list[fx.Node],
            why: Rejected) -> Substitution | Rejected:
    """The opaque op, unless the kernel does what it cannot express (issue 14, findings 1-4)."""
    scalars = [n for n in inputs if not isinstance(example_value(n), torch.Tensor)]
    if scalars:
        return Rejected(Reason.NOT_TRACEABLE, f"{why.detail}, but an opaque op cannot take the symbolic value {scalars[0].name}")
    sub = substitution(SubstitutionKind.OPAQUE, why_opaque=why)
    examples = [example_value(n) for n in inputs]
    try:  # what the op's fake implementation will do under AOTAutograd: fail here, not there
        opaque.fake_outputs(sub.original, spec, examples)
    except Exception as exc:  # noqa: BLE001 - any failure: the site keeps its original
        return Rejected(Reason.OPAQUE_NO_METADATA, f"{why.detail}, but the original forward did not run on fake tensors "
                        f"for the op's output metadata ({type(exc).__name__}: {first_line(exc)})")
    effects = _effects(sub.forward, spec, examples)
    outputs = [example_value(v) for v in _returned(site)]
    aliased = [(j, i) for j, out in enumerate(outputs) for i, e in enumerate(examples)
               if isinstance(out, torch.Tensor) and isinstance(e, torch.Tensor) and torch._C._is_alias_of(out, e)]
    if isinstance(effects, Exception):
        # Checked on the first real call, which falls back to the original inside the op when the
        # kernel writes what the op did not declare: only safe when the original writes nothing
        # (else its writes are undeclared too: lost under functionalization, and a backward that
        # re-runs it writes a leaf in place).
        original = _effects(sub.original, spec, examples)
        if isinstance(original, Exception) or original.written or original.state_written:
            what = "could not be run on fake tensors" if isinstance(original, Exception) else "writes in place too"
            return Rejected(Reason.OPAQUE_UNKNOWN_EFFECTS, f"{why.detail}, but what the kernel writes could not be found on fake "
                            f"tensors ({type(effects).__name__}: {first_line(effects)}) and the original {what}")
        return _unless_written_later(site, inputs, aliased, replace(sub, effects_known=False))
    writes = [f"its input {inputs[i].name}" for i in sorted(effects.written)] + [f"self.{name}" for name in effects.state_written]
    if writes and site.needs_grad:
        return Rejected(Reason.OPAQUE_SIDE_EFFECT, f"{why.detail}, but the kernel writes {', '.join(writes)} in place and "
                        "the opaque op's backward runs the kernel's forward again, which would write twice")
    for i in effects.written:
        shared = [n.name for k, n in enumerate(inputs) if k != i and torch._C._is_alias_of(examples[i], examples[k])]
        if shared:
            return Rejected(Reason.OPAQUE_ALIASING, f"{why.detail}, but the kernel writes {inputs[i].name}, which shares "
                            f"memory with its input {shared[0]}; an opaque op cannot declare that")
    return _unless_written_later(site, inputs, [*aliased, *effects.aliased], replace(sub, written=tuple(sorted(effects.written))))


def _effects(forward: Callable[..., Any], spec: CallSpec, examples: list[Any]) -> opaque.Effects | Exception:
    """What `forward` writes and aliases, found on fakes of the call's example values, or on fakes
    with concrete sizes where symbolic ones fail (a write does not depend on the sizes)."""
    effects = opaque.effects_on_fakes(forward, spec, examples)
    if isinstance(effects, Exception):
        concrete = opaque.with_size_hints(examples)
        if concrete is not None:
            retried = opaque.effects_on_fakes(forward, spec, concrete)
            if not isinstance(retried, Exception):
                return retried
    return effects


def _unless_written_later(site: Site, inputs: list[fx.Node], aliased: list[tuple[int, int]], sub: Substitution) -> Substitution | Rejected:
    """An opaque op copies an output that aliases an input: right, unless the caller writes one
    of them afterwards (through any view), expecting the other to change too."""
    if not aliased:
        return sub
    returned = list(site.outputs)
    for j, i in aliased:
        for node in (returned[j] if j < len(returned) else None, inputs[i]):
            if isinstance(node, fx.Node) and _written_after(site.nodes[-1], node):
                return Rejected(Reason.OPAQUE_ALIASING, f"{sub.why_opaque.detail if sub.why_opaque else 'opaque op'}, but output "
                                f"{j} of the call is a view of its input {inputs[i].name}, and {node.name} is written after "
                                "the call; an opaque op returns a copy, so that write would be lost")
    return sub


def _returned(site: Site) -> list[Any]:
    """The values the original call returned inside its region, one per tensor output."""
    return list(site.nodes[-1].args[1:]) if site.marked else list(site.outputs)


_INPLACE = frozenset({operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv, operator.imod,
                      operator.ipow, operator.iand, operator.ior, operator.ixor, operator.ilshift, operator.irshift,
                      operator.imatmul, operator.setitem})


def _written_after(last: fx.Node, value: fx.Node) -> bool:
    """Whether a node after `last` writes `value` in place, directly or through a chain of first
    arguments (views, getitems) — by the op's spelling: `add_`, `x[i] = v`, `+=`, `out=`, schemas."""
    derived = {value}
    node = last.next
    while node.op != "root":
        first = node.args[0] if node.args else None
        name = str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", "")
        schema = getattr(node.target, "_schema", None)
        writes = (node.op == "call_method" and ((name.endswith("_") and not name.startswith("_")) or name.startswith("__i")
                  or name == "__setitem__")) or (node.op == "call_function" and (
                  node.target in _INPLACE or (name.endswith("_") and not name.startswith("_")) or node.kwargs.get("inplace") is True
                  or (schema is not None and schema.is_mutable)))
        if (writes and first in derived) or node.kwargs.get("out") in derived:
            return True
        if first in derived:
            derived.add(node)  # a view (or any value computed from it first): conservative
        node = node.next
    return False


def first_line(exc: Exception) -> str:
    """The first line of an exception's message, at most 200 characters, for reasons and notes."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


# -- tracing --------------------------------------------------------------------------------------


def trace_kernel(forward: Callable[..., Any], spec: CallSpec, examples: list[Any]) -> fx.GraphModule | Exception:
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


def example_key(value: Any) -> Any:
    """What a trace depends on in one input: shape, strides, dtype, device, requires_grad (or the value)."""
    if isinstance(value, torch.Tensor):
        return ("t", str(tuple(value.shape)), str(value.stride()), value.dtype, value.device, value.requires_grad)
    return ("v", type(value).__name__, str(value))


def spec_key(spec: CallSpec) -> tuple:
    """What a trace depends on in a call's layout and module template."""
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
