"""Which kernels a kernelized model runs, and from which repository (`kernels` 0.18's `get_kernelized_layers`).

>>> import torch
>>> from torch import nn
>>> import kernel_fx
>>> @kernel_fx.use_kernel_forward_from_hub("Scale")
... class Scale(nn.Module):
...     def forward(self, x):
...         return 2 * x
>>> model = kernel_fx.kernelize(nn.Sequential(Scale()), device="cpu")
>>> get_kernelized_layers(model)       # no mapping: nothing runs a kernel
KernelizedLayers(layers={}, funcs={})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..layers import HUB_FUNCS_ATTR, FunctionLayer
from ..originals import installed_forward
from .forwards import KernelForward


@dataclass(frozen=True)
class KernelizedLayer:
    """A module that runs a kernel, and the repository the kernel came from."""

    module: nn.Module
    repo: Any


@dataclass(frozen=True)
class KernelizedFunc:
    """A function module (of `use_kernelized_func`) that runs a kernel, and the repository it came from."""

    module: nn.Module
    repo: Any


@dataclass(frozen=True)
class KernelizedLayers:
    """`layers`: {module path: KernelizedLayer}; `funcs`: {(host module path, function name): KernelizedFunc}."""

    layers: dict[str, KernelizedLayer] = field(default_factory=dict)
    funcs: dict[tuple[str, str], KernelizedFunc] = field(default_factory=dict)


def get_kernelized_layers(model: nn.Module) -> KernelizedLayers:
    """The layers and functions of `model` that `kernelize` gave a kernel, with their repositories.

    With `kernelize(mode=None)` a site may run different kernels per call (training or not,
    compiling or not): `repo` is the one that runs in eager calls in the module's current
    training state, else the first one that runs under any condition. Functions are keyed by
    (host module path, function name) whether kernel_fx's or `kernels`' `use_kernelized_func` attached them.
    """
    found = KernelizedLayers()
    for path, module in model.named_modules():
        repo = _repo(module)
        if repo is not None:
            if isinstance(module, FunctionLayer):
                host, _, name = path.rpartition(".")
                found.funcs[(host, name)] = KernelizedFunc(module, repo)
            else:
                found.layers[path] = KernelizedLayer(module, repo)
        for name, function in vars(module).get(HUB_FUNCS_ATTR, {}).items():
            repo = _repo(function) if isinstance(function, nn.Module) else None
            if repo is not None:
                found.funcs[(path, name)] = KernelizedFunc(function, repo)
    return found


def _repo(module: nn.Module) -> Any:
    forward = installed_forward(module)
    if forward is None:
        return None
    return _current_repo(forward)


def _current_repo(forward: KernelForward) -> Any:
    # repos are indexed like Condition.index: grad + 2 * compiling
    now = forward.repos[int(forward.owner.training)]
    return now if now is not None else next((r for r in forward.repos if r is not None), None)
