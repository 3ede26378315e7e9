"""Checks that a kernel layer class can stand in for a user's layer, cached per pair.

A kernel layer is an `nn.Module` subclass with only `forward` (and the optional class
attributes `has_backward`, `can_torch_compile` and `dtensor`, see `kernel_fx.dtensor`), whose forward has the original's parameter
names, kinds and defaults.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

ALLOWED_MEMBERS = frozenset({"forward", "has_backward", "can_torch_compile", "dtensor"})
_IGNORED = frozenset(
    {"__module__", "__qualname__", "__doc__", "__annotations__", "__dict__", "__weakref__",
     "__firstlineno__", "__static_attributes__", "__orig_bases__", "__parameters__", "__annotate__",
     "__annotate_func__", "__annotations_cache__"}
)

_cache: dict[tuple[object, Any, object], str | None] = {}


def kernel_problem(kernel: object, original: Callable[..., Any], original_sig: Callable[[], inspect.Signature],
                   owner: object = None) -> str | None:
    """Why `kernel` cannot replace the forward `original`, or None when it can.

    `original` and `owner` (what fixes the signature, see `layers.signature_owner`) key the cache:
    every function module shares one forward, so the forward alone would hand one function's
    verdict to every other function mapped to the same kernel. `original_sig` gives the signature
    (with `self`) when needed.

    >>> from torch import nn
    >>> class Kernel(nn.Module):
    ...     def forward(self, x):
    ...         return x
    >>> def shared(self, *args):
    ...     pass
    >>> one = lambda: inspect.signature(lambda self, x: None)
    >>> two = lambda: inspect.signature(lambda self, x, y: None)
    >>> kernel_problem(Kernel, shared, one, owner="one") is None
    True
    >>> kernel_problem(Kernel, shared, two, owner="two")
    'forward takes (self, x), the original takes (self, x, y)'
    """
    key = (kernel, original, owner)
    if key not in _cache:
        _cache[key] = _class_problem(kernel) or _signature_problem(kernel, original_sig())  # type: ignore[arg-type]
    return _cache[key]


def _class_problem(kernel: object) -> str | None:
    if not (isinstance(kernel, type) and issubclass(kernel, nn.Module)):
        return f"{kernel!r} is not an nn.Module subclass"
    for klass in kernel.__mro__:
        if klass is nn.Module or issubclass(nn.Module, klass):
            break
        if "__init__" in vars(klass):
            return f"{klass.__qualname__} defines __init__; kernel layers may not (they run on the user's module)"
        extra = sorted(n for n in vars(klass) if n not in ALLOWED_MEMBERS and n not in _IGNORED)
        if extra:
            allowed = ", ".join(sorted(ALLOWED_MEMBERS))
            return f"{klass.__qualname__} has members {', '.join(extra)}; only {allowed} are allowed"
    if "forward" not in {n for k in kernel.__mro__[: kernel.__mro__.index(nn.Module)] for n in vars(k)}:
        return f"{kernel.__qualname__} does not define forward"
    return None


def _describe(p: inspect.Parameter) -> str:
    default = "" if p.default is inspect.Parameter.empty else f"={p.default!r}"
    return f"{p.name}{default} ({p.kind.description})"


def _signature_problem(kernel: type[nn.Module], original: inspect.Signature) -> str | None:
    mine = list(inspect.signature(kernel.forward).parameters.values())
    theirs = list(original.parameters.values())
    for i, (a, b) in enumerate(zip(mine, theirs)):
        if i == 0:
            continue  # self, whatever it is called
        if (a.name, a.kind, a.default) != (b.name, b.kind, b.default):
            return f"forward parameter {i} is {_describe(a)}, the original's is {_describe(b)}"
    if len(mine) != len(theirs):
        names = lambda ps: "(" + ", ".join(p.name for p in ps) + ")"  # noqa: E731
        return f"forward takes {names(mine)}, the original takes {names(theirs)}"
    return None
