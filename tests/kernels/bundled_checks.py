"""What the tests of the bundled kernels share: the loader's import of a variant, demo norms with a
non-trivial weight, and one forward and backward of a kernel's forward bound to a demo module."""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The Triton kernels take cos and sin as constants (no gradient); the CPU kernel differentiates them.
TRITON_CONSTANT_INPUTS = {"ApplyRotary": 2}


def load_variant(variant_dir: Path) -> types.ModuleType:
    """The variant imported by kernel_fx's own loader (under its metadata id)."""
    from kernel_fx import get_local_kernel

    return get_local_kernel(variant_dir)


def layer_name(case: str) -> str:
    """"RMSNorm-odd" -> "RMSNorm": a case is named after its layer, then a variation."""
    return case.split("-")[0]


def constant_inputs(case: str) -> int:
    """How many trailing inputs of `case` the Triton kernels take as constants."""
    return TRITON_CONSTANT_INPUTS.get(layer_name(case), 0)


def norm(cls: type[nn.Module], hidden: int, eps: float) -> nn.Module:
    """A demo norm whose weight is not all ones, so a kernel must read it."""
    module = cls(hidden, eps=eps)
    with torch.no_grad():
        module.weight.copy_(1.0 + 0.1 * torch.randn(hidden))
    return module


def outputs(result: Any) -> tuple[torch.Tensor, ...]:
    return result if isinstance(result, tuple) else (result,)


def run(
    module: nn.Module,
    forward: Callable[..., Any],
    inputs: tuple[torch.Tensor, ...],
    dtype: torch.dtype,
    *,
    device: str = "cpu",
    frozen: int = 0,
) -> tuple[tuple[torch.Tensor, ...], list[torch.Tensor]]:
    """Outputs, and gradients of a fixed random projection of them w.r.t. the inputs (but the last
    `frozen`, which take none), then the parameters."""
    module = module.to(device, dtype)
    leaves = [t.detach().to(device, dtype) for t in inputs]
    for t in leaves[: len(leaves) - frozen]:
        t.requires_grad_()
    outs = outputs(types.MethodType(forward, module)(*leaves))
    gen = torch.Generator(device).manual_seed(1)
    loss = sum((o.double() * torch.randn(o.shape, generator=gen, device=device, dtype=torch.float64)).sum() for o in outs)
    wrt = [t for t in leaves if t.requires_grad] + list(module.parameters())
    return outs, list(torch.autograd.grad(loss, wrt))


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
