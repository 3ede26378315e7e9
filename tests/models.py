"""Small user models with extensible layers, and the kernels written for them, shared by all test folders.

The `Scale` family lives here once: the marked layer, its hub-style twin, and every kernel source
for it, built by `scale_source`. Each kernel computes what its layer computes, another way (so a
substituted model or graph must give the same numbers); kernel repos are built from these sources
by `kernel_repos.make_kernel_repo` (the `kernel_repo` fixture).
"""

from __future__ import annotations

import textwrap

import torch
from torch import nn

import kernel_fx

# -- the Scale family ------------------------------------------------------------------------------


class _ScaleParams(nn.Module):
    """The state of every Scale: a weight of `width` and a plain float attribute."""

    def __init__(self, width: int = 8, factor: float = 3.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, width))  # (width,)
        self.factor = factor


@kernel_fx.use_kernel_forward_from_hub("Scale")
class Scale(_ScaleParams):
    """x * weight * factor: one activation input, a parameter and a plain attribute."""

    def forward(self, x):
        return x * self.weight * self.factor


class HubStyleScale(_ScaleParams):
    """Scale marked the way the Hugging Face `kernels` package marks: only the class attribute."""

    kernel_layer_name = "Scale"

    def forward(self, x):
        return x * self.weight * self.factor


_SCALE_KERNEL = '''
import torch
from torch import nn

CALLS = []
{preamble}

class Scale(nn.Module):
    has_backward = {has_backward}
    can_torch_compile = {can_compile}

    def forward(self, x):
{forward}
'''

# The plain kernel counts its calls (module-level CALLS), so tests see which forward ran.
COUNTED_FORWARD = """
CALLS.append(1)
return torch.mul(x, self.weight * self.factor)
"""

# Data-dependent Python control flow: make_fx on fake tensors cannot trace it.
UNTRACEABLE_FORWARD = """
w = self.weight * self.factor
if bool((x.abs().sum() >= 0).item()):
    return torch.mul(x, w)
return torch.zeros_like(x)
"""

# x * weight * factor, computed fifty times over (and exactly: max(a, a) == a): slower than the original.
SLOW_FORWARD = """
w = self.weight * self.factor
out = torch.mul(x, w)
for _ in range(49):
    out = torch.maximum(out, torch.mul(x, w))
return out
"""

# A custom autograd.Function whose backward counts its calls (BACKWARD_CALLS): it must survive compilation.
FUNCTION_PREAMBLE = """
BACKWARD_CALLS = []

class _ScaleFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, grad):
        BACKWARD_CALLS.append(1)
        x, w = ctx.saved_tensors
        return grad * w, (grad * x).reshape(-1, w.shape[0]).sum(0)
"""
FUNCTION_FORWARD = "return _ScaleFn.apply(x, self.weight * self.factor)"


def scale_source(has_backward: bool = True, can_compile: bool = True, *, forward: str = COUNTED_FORWARD, preamble: str = "") -> str:
    """The source of a Scale kernel's `layers.py`: the counting kernel, or another `forward` body."""
    body = textwrap.indent(textwrap.dedent(forward).strip(), " " * 8)
    return _SCALE_KERNEL.format(has_backward=has_backward, can_compile=can_compile, forward=body, preamble=textwrap.dedent(preamble))


UNTRACEABLE_SCALE = scale_source(forward=UNTRACEABLE_FORWARD)
FUNCTION_SCALE = scale_source(forward=FUNCTION_FORWARD, preamble=FUNCTION_PREAMBLE)


def slow_scale(can_compile: bool = True) -> str:
    return scale_source(can_compile=can_compile, forward=SLOW_FORWARD)


# -- other layers ----------------------------------------------------------------------------------


@kernel_fx.use_kernel_forward_from_hub("AddScaled")
class AddScaled(nn.Module):
    """x + alpha * y: two tensor inputs whose order matters."""

    def __init__(self, alpha: float = 10.0) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x, y):
        return x + self.alpha * y


ADD_SCALED = '''
import torch
from torch import nn

class AddScaled(nn.Module):
    has_backward = True
    can_torch_compile = True

    def forward(self, x, y):
        return torch.add(x, y * self.alpha)
'''


class Net(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(width, width)
        self.scale = Scale(width)
        self.add = AddScaled()

    def forward(self, x):
        h = self.proj(x)
        return self.add(self.scale(h), h)


@kernel_fx.use_kernel_forward_from_hub("Twice")
def twice(x):
    """A marked function: a layer once a module holds it (`use_kernelized_func`)."""
    return 2 * x


@kernel_fx.use_kernelized_func(twice)
class Host(nn.Module):
    """Holds its own `twice` function layer, at `self.twice`."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.twice(x) * self.w


TWICE = '''
from torch import nn
class Twice(nn.Module):
    def forward(self, x):
        return x * 2 + 1000  # visibly different, to see which one ran
'''


class LlamaMLP(nn.Module):
    """transformers' LlamaMLP without transformers (not marked): the reference of the LlamaMLP kernels."""

    def __init__(self, hidden_size: int = 16, intermediate_size: int = 40, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.act_fn = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
