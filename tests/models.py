"""Small user models with extensible layers, shared by the tests."""

from __future__ import annotations

import torch
from torch import nn

import kernel_fx


@kernel_fx.use_kernel_forward_from_hub("Scale")
class Scale(nn.Module):
    """x * weight * factor: one activation input, a parameter and a plain attribute."""

    def __init__(self, width: int = 4, factor: float = 3.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, width))
        self.factor = factor

    def forward(self, x):
        return x * self.weight * self.factor


@kernel_fx.use_kernel_forward_from_hub("AddScaled")
class AddScaled(nn.Module):
    """x + alpha * y: two tensor inputs whose order matters."""

    def __init__(self, alpha: float = 10.0) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x, y):
        return x + self.alpha * y


class Net(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(width, width)
        self.scale = Scale(width)
        self.add = AddScaled()

    def forward(self, x):
        h = self.proj(x)
        return self.add(self.scale(h), h)


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
