"""Which forward a site replaces: the class's, or one the instance holds — and, when `kernelize`
installed a forward of its own, the one that was there before. Every path asks this (the planner
keys plans by it, the compiled pass runs it as the reference), so it lives below both paths; an
installed forward is recognized by the attribute `INSTALLED_ATTR`, not by its eager class.

>>> from torch import nn
>>> original_forward(nn.Identity()) is nn.Identity.forward
True
>>> installed_forward(nn.Identity()) is None
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

ForwardFn = Callable[..., Any]  # called as fn(module, *args, **kwargs)
INSTALLED_ATTR = "kernel_fx_installed"  # set on the class of the forwards kernelize installs


def installed_forward(module: nn.Module) -> Any:
    """The forward `kernelize` installed on `module` (an `eager.forwards.KernelForward`), or None."""
    forward = vars(module).get("forward")
    return forward if getattr(type(forward), INSTALLED_ATTR, False) else None


def previous_forward(module: nn.Module) -> Any:
    """What the instance held as its forward before kernelize (None: the class's)."""
    installed = installed_forward(module)
    return installed.previous if installed is not None else vars(module).get("forward")


def original_forward(module: nn.Module) -> ForwardFn:
    """The forward kernelize replaces, as fn(module, *args): the class's, or an instance's own."""
    return as_method(previous_forward(module), module)


def as_method(previous: Any, module: nn.Module) -> ForwardFn:
    """`previous` (an instance's own forward, or None for the class's) as fn(module, *args)."""
    if previous is None:
        return type(module).forward
    return lambda _module, *args, **kwargs: previous(*args, **kwargs)
