"""Tiny models with extensible layers, CPU kernels for them, and fixtures of the compile tests.

Each kernel computes what its layer computes, another way (so a substituted graph must give the
same numbers), and counts its calls in `CALLS` of its kernel module where a test needs to know
that the kernel itself ran. (No conftest.py here: a second `conftest` module breaks collecting
tests/conftest.py under --doctest-modules; test modules import these fixtures instead.)
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kernel_fx

INNERS = ["eager", "aot_eager"]  # inductor runs in the few tests that name it: it is slow on CPU

# -- layers ----------------------------------------------------------------------------------------


@kernel_fx.use_kernel_forward_from_hub("Scale")
class Scale(nn.Module):
    """x * weight * factor: one activation, a parameter, a float attribute."""

    def __init__(self, width: int = 8, factor: float = 3.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, width))
        self.factor = factor

    def forward(self, x):
        return x * self.weight * self.factor


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


class HubStyleScale(nn.Module):
    """Marked the way the Hugging Face `kernels` package marks: only the class attribute."""

    kernel_layer_name = "Scale"

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, width))
        self.factor = 3.0

    def forward(self, x):
        return x * self.weight * self.factor


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

from kernel_repos import COUNTING_SCALE as SCALE  # noqa: E402  (one source for eager and compile tests)

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

# Data-dependent Python control flow: make_fx on fake tensors cannot trace it.
UNTRACEABLE_SCALE = '''
import torch
from torch import nn

class Scale(nn.Module):
    has_backward = True
    can_torch_compile = True

    def forward(self, x):
        w = self.weight * self.factor
        if bool((x.abs().sum() >= 0).item()):
            return torch.mul(x, w)
        return torch.zeros_like(x)
'''

# A custom autograd.Function whose backward counts its calls: it must survive compilation.
FUNCTION_SCALE = '''
import torch
from torch import nn

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

class Scale(nn.Module):
    has_backward = True
    can_torch_compile = True

    def forward(self, x):
        return _ScaleFn.apply(x, self.weight * self.factor)
'''


def scale_source(has_backward: bool = True, can_compile: bool = True) -> str:
    return SCALE.format(has_backward=has_backward, can_compile=can_compile)


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
    import sys

    return sys.modules[layer.__module__]


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


@kernel_fx.use_kernel_forward_from_hub("Axpy")
class Axpy(nn.Module):
    """alpha * x (+ y): an optional tensor and a float passed by keyword."""

    def forward(self, x, y=None, alpha: float = 1.0):
        out = x * alpha
        return out if y is None else out + y


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


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def mapping(kernel_repo):
    """`mapping(Scale=src, Mix=src)`: a kernel mapping of temp kernel repos, by layer name."""
    return lambda **sources: mapping_for(kernel_repo, **sources)


@pytest.fixture
def counters():
    """Dynamo's counters, cleared: `counters["stats"]["unique_graphs"]` counts compiles."""
    from torch._dynamo.utils import counters as dynamo_counters

    dynamo_counters.clear()
    yield dynamo_counters
    dynamo_counters.clear()


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)
