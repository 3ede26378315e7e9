"""The markers: the exact call boundary of a marked forward, as dynamo traces it for hubkernels.

Three jobs, one vocabulary: emit them while dynamo traces (`marked_call`), recognise them in a
graph (`is_marker`, `value_kinds`, `class_name`), and strip them (`strip_markers`).

`use_kernel_forward_from_hub` wraps the forward of the class it decorates. In eager the wrapper
only calls the original forward. When dynamo traces it for the hubkernels backend, the call is
bracketed by two marker ops that dynamo writes into the graph as they are:

    enter((token, training, names, class, layer), *values) -> aliases of the tensor values, in order
    ...the forward's own nodes, reading those aliases...
    exit((token, spec, plan), *outputs)                   -> aliases of the output tensors, in order

so the backend knows which graph value is which forward argument (`names`: position or keyword)
and which is which output, whatever order the body reads them in. Reading `module.training` here
makes dynamo guard on it, so `model.train()` / `model.eval()` recompiles.

Markers appear only when the graph goes to hubkernels (checked at trace time, without a guard:
dynamo's cache entries are per backend anyway); torch.export and every other backend see the
forward exactly as before. The backend removes every marker before its inner compiler runs.

Nothing here imports torch._dynamo at import time: `import kernel_fx` must stay cheap.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

from .checks.calls import check_while_tracing

# Set on the hubkernels backend function and on HubKernelsBackend: how a trace recognises them.
BACKEND_ATTR = "_kernel_fx_hubkernels"

# Argument kinds in an enter marker's `names`.
TENSOR, CONSTANT, UNSUPPORTED = "tensor", "constant", "unsupported"
# A tuple of tensors (e.g. transformers' `position_embeddings=(cos, sin)`) is the kind (TENSORS, n).
TENSORS = "tensors"


def value_kinds(names: tuple) -> list[str]:
    """The kind of each value an enter marker carries, in order (tuples of tensors spelled out)."""
    kinds: list[str] = []
    for _key, kind in names:
        if isinstance(kind, tuple):
            kinds += [TENSOR] * kind[1]
        elif kind != UNSUPPORTED:
            kinds.append(kind)
    return kinds

_tokens = itertools.count(1)
# Marked classes by `class_name`, so a trace-time choice can plan for the class it names.
MARKED_CLASSES: dict[str, type] = {}


def enter(meta: tuple, *values: Any) -> tuple[torch.Tensor, ...]:
    """Marker at the start of a call; returns aliases of the tensor `values` (never runs compiled)."""
    return tuple(v.view_as(v) for v in values if isinstance(v, torch.Tensor))


def exit(meta: tuple, *outputs: torch.Tensor) -> tuple[torch.Tensor, ...]:  # noqa: A001 - the marker's name
    """Marker at the end of a call; returns aliases of `outputs` (never runs compiled)."""
    return tuple(o.view_as(o) for o in outputs)


def is_marker(target: object) -> bool:
    return target is enter or target is exit


@functools.cache
def allow_markers() -> None:
    """Let dynamo write the markers into graphs as calls (once; imports torch._dynamo)."""
    torch.compiler.allow_in_graph(enter)
    torch.compiler.allow_in_graph(exit)


def site_token(cls: type, wrapper: Callable[..., Any]) -> int | None:
    """Evaluated by dynamo at trace time (`assume_constant_result`): a fresh token pairing one
    call's enter and exit markers, or None when the call must not be marked.

    Not marked: graphs for another backend (or torch.export), and calls where `wrapper` is not
    the forward of `cls` (a subclass with its own forward calling `super().forward`). The module
    itself is not passed: dynamo would guard on its identity (ID_MATCH), and a frame shared by
    many layers would recompile for each. The backend finds it from the call's nn_module_stack.
    """
    if cls.forward is not wrapper or not _compiling_for_hubkernels():
        return None
    allow_markers()
    return next(_tokens)


# = torch._dynamo.assume_constant_result, without importing dynamo
site_token._dynamo_marked_constant = True  # type: ignore[attr-defined]


def class_name(cls: type) -> str:
    """How an enter marker names its module's class, so the backend can check the module it finds."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _compiling_for_hubkernels() -> bool:
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        backend: Any = InstructionTranslator.current_tx().output.compiler_fn
    except Exception:  # noqa: BLE001 - not tracing, or a torch without these internals: do not mark
        return False
    return is_hubkernels(backend)


# Attributes under which dynamo's wrappers keep the backend they wrap: WrapBackendDebug,
# _TorchCompileWrapper, functools.partial, functools.wraps.
_WRAPPED = ("_torchdynamo_orig_backend", "compiler_fn", "func", "__wrapped__")


def is_hubkernels(backend: Any) -> bool:
    """Whether `backend` (a compiler function as dynamo holds it) is hubkernels, however wrapped.

    Under DistributedDataParallel dynamo compiles with `DDPOptimizer.compile_fn`, a bound method
    whose instance keeps the user's backend as `backend_compile_fn` (and splits the graph at
    gradient-bucket boundaries before calling it on each piece).

    >>> import functools
    >>> class Ddp:  # the shape of torch._dynamo.backends.distributed.DDPOptimizer
    ...     def __init__(self, backend): self.backend_compile_fn = backend
    ...     def compile_fn(self, gm, example_inputs): ...
    >>> def hub(gm, example_inputs): ...
    >>> hub._kernel_fx_hubkernels = True
    >>> is_hubkernels(Ddp(functools.partial(hub)).compile_fn), is_hubkernels(Ddp(print).compile_fn)
    (True, False)
    """
    return any(getattr(layer, BACKEND_ATTR, False) for layer in backend_layers(backend))


def backend_layers(backend: Any) -> list[Any]:
    """`backend` and every backend it wraps, outermost first (dynamo's wrappers, partials,
    DDPOptimizer's `compile_fn` and the backend behind it)."""
    layers: list[Any] = []
    for _ in range(12):
        if backend is None:
            break
        layers.append(backend)
        owner = getattr(backend, "__self__", None)  # a bound method: DDPOptimizer.compile_fn
        if owner is not None and getattr(owner, "backend_compile_fn", None) is not None:
            backend = owner.backend_compile_fn
            continue
        backend = next((getattr(backend, a) for a in _WRAPPED if getattr(backend, a, None) is not None), None)
    return layers


def _ddp_buckets(backend: Any) -> bool:
    return any(getattr(getattr(b, "__self__", None), "backend_compile_fn", None) is not None for b in backend_layers(backend))


def split_into_buckets() -> bool:
    """Evaluated by dynamo at trace time (`assume_constant_result`): whether the graph being traced
    goes to hubkernels through DDPOptimizer, which cuts it at gradient-bucket boundaries — where
    the parameters' bytes cross the bucket size, so possibly inside a call that owns parameters."""
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        backend: Any = InstructionTranslator.current_tx().output.compiler_fn
    except Exception:  # noqa: BLE001 - not tracing
        return False
    return _ddp_buckets(backend) and is_hubkernels(backend)


split_into_buckets._dynamo_marked_constant = True  # type: ignore[attr-defined]


def _routable(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, torch.dtype, torch.SymInt, torch.SymFloat, torch.SymBool))


def marked_call(forward: Callable[..., Any], wrapper: Callable[..., Any], module: nn.Module, args: tuple, kwargs: dict) -> Any:
    """What a marked forward does while dynamo traces it. Dynamo inlines this function."""
    token = site_token(type(module), wrapper)
    if token is None:  # other backends and torch.export: exactly the forward
        return forward(module, *args, **kwargs)
    names = []
    values = []
    for key, value in itertools.chain(enumerate(args), kwargs.items()):
        if isinstance(value, torch.Tensor):
            names.append((key, TENSOR))
            values.append(value)
        elif _routable(value):
            names.append((key, CONSTANT))
            values.append(value)
        elif isinstance(value, tuple) and value and all(isinstance(v, torch.Tensor) for v in value):
            names.append((key, (TENSORS, len(value))))
            values.extend(value)
        else:  # not passed to the marker (dynamo could not put it in a graph); the backend skips the site
            names.append((key, UNSUPPORTED))
    layer_name = getattr(module, "kernel_layer_name", None)
    plan_id = 0
    chooser = _trace_time["chooser"]
    if chooser is not None and (any(kind == UNSUPPORTED for _key, kind in names) or (split_into_buckets() and _owns_parameters(module))):
        # An argument carries Python state (a KV cache): no graph value can stand for it after
        # tracing. Or DDPOptimizer will split the graph at bucket boundaries, which fall where
        # parameters are read, so possibly inside this call. Either way the backend's choice is made
        # now and its kernel traced in place of the forward, before the graph is cut.
        plan_id = chooser(class_name(type(module)), layer_name, _device_type(values), _needs_grad(module, values))
    meta = (token, module.training, tuple(names), class_name(type(module)), layer_name, plan_id)
    if plan_id:
        kernel_forward = getattr(TRACE_TIME_FORWARDS, f"plan_{plan_id}", None)
        # the checks every path runs, on this call's fake values at trace time (see call_checks)
        if kernel_forward is not None and check_while_tracing(plan_id, 0, args, kwargs, module):
            forward = kernel_forward
    aliases = iter(enter(meta, *values))
    new_args = list(args)
    new_kwargs = dict(kwargs)
    for key, kind in names:
        if kind == TENSOR:
            alias: Any = next(aliases)
        elif isinstance(kind, tuple):
            alias = tuple(next(aliases) for _ in range(kind[1]))
        else:
            continue
        if isinstance(key, int):
            new_args[key] = alias
        else:
            new_kwargs[key] = alias
    out = forward(module, *new_args, **new_kwargs)
    return _marked_output(token, out, plan_id)


def _owns_parameters(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _device_type(values: list[Any]) -> str:
    return next((v.device.type for v in values if isinstance(v, torch.Tensor)), "cpu")


def _needs_grad(module: nn.Module, values: list[Any]) -> bool:
    if module.training:
        return True
    if not torch.is_grad_enabled():
        return False
    return any(v.requires_grad for v in values if isinstance(v, torch.Tensor)) or any(p.requires_grad for p in module.parameters())


class _Forwards:
    """Kernel forwards chosen at trace time, as attributes `plan_<id>`: dynamo keeps the view of a
    dict it read earlier in a trace, but looks up a new attribute name afresh."""


# Trace-time substitution (see compile/trace_time.py, which registers the chooser when the backend
# loads): `chooser(class name, layer name, device type, needs grad) -> plan id` runs at trace time
# (dynamo treats it as a constant), and a plan that runs a kernel sets its forward here.
_trace_time: dict[str, Any] = {"chooser": None}
TRACE_TIME_FORWARDS = _Forwards()


def set_trace_time_chooser(chooser: Callable[[str, str | None, str, bool], int]) -> None:
    """Install the function that decides, while dynamo traces, a call whose arguments carry Python state."""
    chooser._dynamo_marked_constant = True  # type: ignore[attr-defined]  # = torch._dynamo.assume_constant_result
    _trace_time["chooser"] = chooser


def _marked_output(token: int, out: Any, plan_id: int) -> Any:
    if isinstance(out, torch.Tensor):
        return exit((token, True, plan_id), out)[0]
    if isinstance(out, tuple) and all(o is None or isinstance(o, torch.Tensor) for o in out):
        spec = tuple(o is not None for o in out)
        routed = iter(exit((token, spec, plan_id), *[o for o in out if o is not None]))
        return tuple(next(routed) if is_tensor else None for is_tensor in spec)
    return out  # no exit marker: the backend sees an unclosed call and leaves it alone


def strip_markers(graph: fx.Graph) -> None:
    """Remove every marker left in `graph` (calls not substituted, partial calls): users of a
    marker's aliases read the marker's inputs again."""
    markers = [n for n in graph.nodes if n.op == "call_function" and is_marker(n.target)]
    unalias(graph, markers)
    for marker in reversed(markers):
        if not marker.users:
            graph.erase_node(marker)


def unalias(graph: fx.Graph, markers: list[fx.Node]) -> None:
    """Let every user of a marker's alias read the marker's input instead."""
    for marker in markers:
        if marker.target is enter:
            kinds = value_kinds(marker.args[0][2])
            sources = [v for kind, v in zip(kinds, marker.args[1:]) if kind == TENSOR]
        else:
            sources = list(marker.args[1:])
        for user in list(marker.users):
            if user.op == "call_function" and user.target is operator.getitem and isinstance(user.args[1], int):
                user.replace_all_uses_with(sources[user.args[1]])
                graph.erase_node(user)
