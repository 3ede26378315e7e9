"""Kernels on DTensor inputs: what a kernel declares, when its placements allow it, how it runs.

A Hub kernel is usually a `torch.library` custom op with no sharding strategy: called on DTensors
(tensor parallel, FSDP2's unsharded parameters are plain tensors but a TP residual stream is not)
it fails with "Operator ... does not have a sharding strategy registered". A kernel class says
what it can do with the class attribute `dtensor`:

    "unsupported"  (default) a call with a DTensor among its inputs or its module's parameters
                   keeps the original forward, with the reason `Reason.DTENSOR`
    "local"        the kernel works row by row: every output position depends only on the same
                   position of its inputs along every dimension but the last. It then runs on the
                   local shards (as `torch.distributed.tensor.experimental.local_map`) when no DTensor
                   is sharded on its last dimension or `Partial`, all share one mesh, the module's
                   own tensors are `Replicate`, and the sharded inputs agree on the sharded
                   dimension (counted from the end). Outputs take the first DTensor argument's
                   placements; gradients of the module's replicated tensors are `Partial` where
                   the activations are sharded (each rank saw part of the rows).
    "native"       the kernel is built from ops DTensor can shard: it runs on the DTensors as given

Both paths use this: eager `kernelize` installs forwards that check each call (`guard`), and the
compiled pass checks each site's graph values (`kernel_fx.compile.dtensor_inputs`).

>>> from torch import nn
>>> class Kernel(nn.Module):
...     dtensor = "local"
>>> dtensor_mode(Kernel), dtensor_mode(nn.Module)
('local', 'unsupported')
"""

from __future__ import annotations

import functools
import logging
import sys
import weakref
from collections.abc import Callable, Iterable, Sequence
from types import MethodType
from typing import Any

import torch
from torch import nn

from .decisions import Reason, Rejected

logger = logging.getLogger(__name__)

UNSUPPORTED, LOCAL, NATIVE = "unsupported", "local", "native"
MODES = (UNSUPPORTED, LOCAL, NATIVE)
ATTR = "dtensor"


def dtensor_mode(kernel: type) -> str:
    """The kernel class's declared DTensor handling (`dtensor` attribute), validated."""
    mode = getattr(kernel, ATTR, UNSUPPORTED)
    if mode not in MODES:
        raise ValueError(f"{kernel.__qualname__}.{ATTR} = {mode!r} is not a DTensor mode; use one of {', '.join(map(repr, MODES))}.")
    return mode


def _dtensor_class() -> type | None:
    """DTensor's class, or None while torch.distributed.tensor is not imported (no DTensor exists)."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None) if module is not None else None


def is_dtensor(value: Any) -> bool:
    cls = _dtensor_class()
    return cls is not None and isinstance(value, cls)


def flat_tensors(values: Iterable[Any]) -> list[torch.Tensor]:
    """The tensors among `values`, tuples and lists spelled out."""
    found: list[torch.Tensor] = []
    for value in values:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (tuple, list)):
            found.extend(flat_tensors(value))
    return found


def _describe(tensor: Any) -> str:
    return f"{type(tensor).__name__}({', '.join(str(p) for p in tensor.placements)})"


def problem(kernel: type, activations: Sequence[Any], own: Sequence[Any]) -> Rejected | None:
    """Why `kernel` cannot run on these inputs (`activations`: the call's tensor arguments; `own`:
    the module's parameters and buffers it reads), or None: no DTensor among them, or the
    kernel's declared handling allows their placements."""
    dtensors = [t for t in [*activations, *own] if is_dtensor(t)]
    if not dtensors:
        return None
    mode = dtensor_mode(kernel)
    seen = ", ".join(_describe(t) for t in dtensors[:3])
    if mode == NATIVE:
        return None
    if mode == UNSUPPORTED:
        return Rejected(Reason.DTENSOR, f"inputs are DTensors ({seen}) and kernel {kernel.__qualname__} declares no DTensor "
                        "handling (class attribute dtensor = 'local' or 'native')")
    why = _local_problem([t for t in activations if is_dtensor(t)], [t for t in own if is_dtensor(t)])
    return Rejected(Reason.DTENSOR, f"kernel {kernel.__qualname__} runs on local shards, but {why}") if why else None


def _local_problem(activations: list[Any], own: list[Any]) -> str | None:
    meshes = {id(t.device_mesh) for t in [*activations, *own]}
    if len(meshes) > 1:
        return "its DTensor inputs are on different device meshes"
    for t in own:
        if not all(p.is_replicate() for p in t.placements):
            return f"a parameter of the module is {_describe(t)}, not replicated"
    sharded: dict[int, set[int]] = {}
    for t in activations:
        for mesh_dim, p in enumerate(t.placements):
            if p.is_partial():
                return f"an input is {_describe(t)}: partial sums are not rows"
            if p.is_shard():
                from_end = p.dim - t.ndim if p.dim >= 0 else p.dim
                if from_end == -1:
                    return f"an input of shape {tuple(t.shape)} is {_describe(t)}: sharded on its last dimension"
                sharded.setdefault(mesh_dim, set()).add(from_end)
    if any(len(dims) > 1 for dims in sharded.values()):
        return "its inputs are sharded on different dimensions"
    return None


def run_local(forward: Callable[..., Any], this: Any, own: dict[str, torch.Tensor], args: tuple, kwargs: dict) -> Any:
    """Call `forward(this, *args, **kwargs)` on local shards, as `local_map` does: the DTensors among
    the arguments and among `own` (the module's tensors by dotted name, as `this` reads them)
    become local tensors, and the output tensors DTensors placed like the first DTensor argument.
    Gradients: an argument's keep its placements; a replicated module tensor's are `Partial` on
    the mesh dimensions where arguments are sharded. Call only once `problem` said yes."""
    from torch.distributed.tensor import DTensor, Partial, Replicate

    flat_args, spec = torch.utils._pytree.tree_flatten((args, kwargs))
    first = next(t for t in flat_args if is_dtensor(t))
    mesh, placements = first.device_mesh, tuple(first.placements)
    sharded = {i for t in flat_args if is_dtensor(t) for i, p in enumerate(t.placements) if p.is_shard()}
    own_grad = tuple(Partial() if i in sharded else Replicate() for i in range(mesh.ndim))
    local_args = [t.to_local(grad_placements=t.placements) if is_dtensor(t) else t for t in flat_args]
    local_own = {n: t.to_local(grad_placements=own_grad) if is_dtensor(t) else t for n, t in own.items()}
    args, kwargs = torch.utils._pytree.tree_unflatten(local_args, spec)
    out = forward(LocalSelf(this, local_own), *args, **kwargs)

    def wrap(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return DTensor.from_local(value, mesh, placements, run_check=False)
        return value

    return tuple(wrap(o) for o in out) if isinstance(out, (tuple, list)) else wrap(out)


class LocalSelf:
    """`self` for a kernel on local shards: the module's tensors by name from `local`, submodules
    as `LocalSelf`s, methods bound to this object, everything else from the wrapped `base`."""

    __slots__ = ("_base", "_local")

    def __init__(self, base: Any, local: dict[str, torch.Tensor]) -> None:
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_local", local)

    def __getattr__(self, name: str) -> Any:
        local: dict[str, torch.Tensor] = object.__getattribute__(self, "_local")
        if name in local:
            return local[name]
        base = object.__getattribute__(self, "_base")
        value = getattr(base, name)
        prefix = name + "."
        if any(k.startswith(prefix) for k in local):
            return LocalSelf(value, {k[len(prefix):]: v for k, v in local.items() if k.startswith(prefix)})
        if isinstance(value, MethodType) and value.__self__ is base:
            return MethodType(value.__func__, self)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a kernel on local shards cannot set {name!r} on its module")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)


# -- the eager path -------------------------------------------------------------------------------

# Modules whose installed kernel fell back on DTensor inputs, with the reason (see `fallbacks`).
_FALLBACKS: weakref.WeakKeyDictionary[nn.Module, Rejected] = weakref.WeakKeyDictionary()
_GUARDS: dict[tuple[Any, Any], Callable[..., Any]] = {}


def module_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's parameters and buffers by dotted name (what a kernel's `self` reads)."""
    return {**dict(module.named_parameters(remove_duplicate=False)), **dict(module.named_buffers(remove_duplicate=False))}


def guard(kernel: type, original: Callable[..., Any]) -> Callable[..., Any]:
    """The forward kernelize installs for `kernel`: the kernel's own while no DTensor is around
    (one dictionary look-up per call), else as `kernel.dtensor` allows, else `original`.

    One function per (kernel, original), so forwards planned alike stay identical."""
    key = (kernel, original)
    if key not in _GUARDS:
        def forward(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
            cls = _dtensor_class()
            if cls is None or not _any_dtensor(cls, module, args, kwargs):
                return kernel.forward(module, *args, **kwargs)  # looked up per call, as an unguarded table would
            return dtensor_call(kernel, original, module, args, kwargs)

        functools.update_wrapper(forward, kernel.forward)  # the kernel's name and module (pickled models find it)
        forward.kernel_class = kernel  # type: ignore[attr-defined]  # what the checks' subject names as its kernel
        _GUARDS[key] = forward
    return _GUARDS[key]


def _any_dtensor(cls: type, module: nn.Module, args: tuple, kwargs: dict) -> bool:
    """Whether a DTensor is among the arguments (tuples one level deep) or the module's parameters."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, cls) or (isinstance(value, tuple) and any(isinstance(v, cls) for v in value)):
            return True
    return _dtensor_parameter(cls, module)


def _dtensor_parameter(cls: type, module: nn.Module) -> bool:
    # the module's own dicts, not `module.parameters()`: that costs ~10 µs a call, this ~1 µs
    if any(isinstance(p, cls) for p in module._parameters.values()):
        return True
    return any(_dtensor_parameter(cls, m) for m in module._modules.values() if m is not None)


def dtensor_call(kernel: type, original: Callable[..., Any], module: nn.Module, args: tuple, kwargs: dict) -> Any:
    """One eager call of a kernelized module that may see DTensors."""
    own = module_tensors(module)
    activations = flat_tensors([*args, *kwargs.values()])
    if not any(is_dtensor(t) for t in [*activations, *own.values()]):
        return kernel.forward(module, *args, **kwargs)
    rejected = problem(kernel, activations, list(own.values()))
    if rejected is not None:
        if _FALLBACKS.get(module) != rejected:
            logger.warning("kernel_fx: %s keeps its original forward: %s", type(module).__name__, rejected)
        _FALLBACKS[module] = rejected
        return original(module, *args, **kwargs)
    _FALLBACKS.pop(module, None)
    if dtensor_mode(kernel) == NATIVE:
        return kernel.forward(module, *args, **kwargs)
    return run_local(kernel.forward, module, own, args, kwargs)


def fallbacks(model: nn.Module) -> dict[str, Rejected]:
    """The modules of `model` whose kernelized forward last kept the original because of DTensor
    inputs, by path, with the reason (empty when every kernel ran).

    >>> fallbacks(nn.Linear(2, 2))
    {}
    """
    return {path: _FALLBACKS[m] for path, m in model.named_modules() if m in _FALLBACKS}
