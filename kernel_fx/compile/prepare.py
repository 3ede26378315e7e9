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
  `kernel_fx::opaque_kernel` op whose output metadata comes from the original forward.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import fx, nn

from ..decisions import Reason, Rejected
from ..dtensor import NATIVE, dtensor_mode, is_dtensor, run_local
from ..graph_records import SubstitutionKind
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
        return _opaque(substitution, inputs, Rejected(Reason.NOT_TRACEABLE, "kernel has can_torch_compile = False; it runs as one opaque op"))
    traced = cache.trace(kernel.forward, spec, [example_value(n) for n in inputs])
    if isinstance(traced, Exception):
        return _opaque(substitution, inputs, Rejected(
            Reason.NOT_TRACEABLE, f"tracing the kernel failed ({type(traced).__name__}: {first_line(traced)}); it runs as one opaque op"))
    has_constants = any(n.op == "get_attr" for n in traced.graph.nodes)
    if site.needs_grad or site.context.autocast or has_constants:
        return substitution(SubstitutionKind.CALL)
    return substitution(SubstitutionKind.TRACED, traced)


def _on_local_shards(kernel_forward: Callable[..., Any], this: Any, *args: Any, **kwargs: Any) -> Any:
    return run_local(kernel_forward, this, standin_tensors(this), args, kwargs)


def _opaque(substitution: Callable[..., Substitution], inputs: list[fx.Node], why: Rejected) -> Substitution | Rejected:
    scalars = [n for n in inputs if not isinstance(example_value(n), torch.Tensor)]
    if scalars:
        return Rejected(Reason.NOT_TRACEABLE, f"{why.detail}, but an opaque op cannot take the symbolic value {scalars[0].name}")
    return substitution(SubstitutionKind.OPAQUE, why_opaque=why)


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
