"""Tiny models with extensible layers and CPU kernels for them, used by the compile tests only.

Each kernel computes what its layer computes, another way, so a substituted graph must give the
same numbers. The Scale family (layer and kernels) is shared with the other test folders, in
tests/models.py; the fixtures of the compile tests are in conftest.py.
"""

from __future__ import annotations

import sys

import torch
from models import Scale
from torch import nn

import kernel_fx

INNERS = ["eager", "aot_eager"]  # inductor runs in the few tests that name it: it is slow on CPU

# -- layers ----------------------------------------------------------------------------------------


@kernel_fx.use_kernel_forward_from_hub("Mix")
class Mix(nn.Module):
    """alpha * y - x: two inputs, and the body reads its SECOND argument first."""

    def __init__(self, alpha: float = 10.0) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x, y):
        h = self.alpha * y
        return h - x


@kernel_fx.use_kernel_forward_from_hub("AddNorm")
class AddNorm(nn.Module):
    """Residual add then RMS norm; returns (normed, residual)."""

    def __init__(self, width: int = 8, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(1.0 + 0.1 * torch.arange(width, dtype=torch.float32))
        self.eps = eps

    def forward(self, h, residual):
        residual = h + residual
        variance = residual.pow(2).mean(-1, keepdim=True)
        return self.weight * residual * torch.rsqrt(variance + self.eps), residual


@kernel_fx.use_kernel_forward_from_hub("Outer")
class Outer(nn.Module):
    """An extensible layer holding another one."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.inner = Scale(width, factor=2.0)

    def forward(self, x):
        return torch.tanh(self.inner(x)) + 1.0


@kernel_fx.use_kernel_forward_from_hub("Axpy")
class Axpy(nn.Module):
    """alpha * x (+ y): an optional tensor and a float passed by keyword."""

    def forward(self, x, y=None, alpha: float = 1.0):
        out = x * alpha
        return out if y is None else out + y


class HubStyleMix(nn.Module):
    """The two-input trap, marked only by the class attribute: its call cannot bind exactly."""

    kernel_layer_name = "Mix"

    def __init__(self) -> None:
        super().__init__()
        self.alpha = 10.0

    def forward(self, x, y):
        h = self.alpha * y
        return h - x


class Block(nn.Module):
    """Linear -> Scale -> Mix(scale(h), h) -> AddNorm(., h) -> Linear."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.proj = nn.Linear(width, width)
        self.scale = Scale(width)
        self.mix = Mix()
        self.norm = AddNorm(width)
        self.out = nn.Linear(width, width)

    def forward(self, x):
        h = self.proj(x)
        m = self.mix(self.scale(h), h)
        n, r = self.norm(m, h)
        return self.out(n) + r


# -- kernels (sources of kernel repos) ------------------------------------------------------------

MIX = '''
import torch
from torch import nn

class Mix(nn.Module):
    has_backward = True
    can_torch_compile = True

    def forward(self, x, y):
        return torch.sub(torch.mul(y, self.alpha), x)
'''

ADD_NORM = '''
import torch
from torch import nn

class AddNorm(nn.Module):
    has_backward = True
    can_torch_compile = True

    def forward(self, h, residual):
        r = torch.add(residual, h)
        inv = torch.rsqrt(torch.mean(r * r, dim=-1, keepdim=True) + self.eps)
        return r * inv * self.weight, r
'''

OUTER = '''
import torch
from torch import nn

class Outer(nn.Module):
    has_backward = True
    can_torch_compile = True

    def forward(self, x):
        return torch.add(torch.tanh(torch.mul(x, self.inner.weight * self.inner.factor)), 1.0)
'''

AXPY = '''
import torch
from torch import nn

class Axpy(nn.Module):
    has_backward = True
    can_torch_compile = True

    def forward(self, x, y=None, alpha: float = 1.0):
        out = torch.mul(x, alpha)
        return out if y is None else torch.add(out, y)
'''


# -- helpers ---------------------------------------------------------------------------------------


def mapping_for(kernel_repo, **sources: str) -> dict:
    """{layer name: {"cpu": LocalLayerRepository}} for kernel sources given by layer name."""
    mapping = {}
    for name, source in sources.items():
        root = kernel_repo({"torch-cpu": {"layers.py": source}}, name=name.lower())
        mapping[name] = {"cpu": kernel_fx.LocalLayerRepository(root, layer_name=name)}
    return mapping


def kernel_module(repo_mapping: dict, name: str):
    """The imported kernel module behind a mapping entry (to read its CALLS)."""
    layer = repo_mapping[name]["cpu"].load(backend="cpu")
    return sys.modules[layer.__module__]


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]
