"""Triton layers for the demo's extensible layers, each a call of one custom op (see `_ops`).

Each class only has a `forward`, which runs with `self` bound to the user's module (so it reads
`self.weight`, `self.variance_epsilon`). Arithmetic is in float32 with one rounding per output,
so results differ from the reference (which rounds between steps) by at most a few ulps.
Output dtypes follow the reference's type promotion.
"""

from __future__ import annotations

import torch
from torch import nn

from . import _ops

__all__ = ["AddRMSNorm", "ApplyRotary", "Attention", "RMSNorm", "SiluAndMul"]


class RMSNorm(nn.Module):
    """One pass over each row: sum of squares, normalise, scale by `self.weight`."""

    has_backward = True
    can_torch_compile = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return _ops.rms_norm(hidden_states, self.weight, self.variance_epsilon)


class AddRMSNorm(nn.Module):
    """Residual add fused with RMSNorm: reads two rows, writes the sum and its norm."""

    has_backward = True
    can_torch_compile = True

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _ops.add_rms_norm(hidden_states, residual, self.weight, self.variance_epsilon)


class SiluAndMul(nn.Module):
    """silu(gate) * up over the two halves of the last dimension, in one pass."""

    has_backward = True
    can_torch_compile = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ops.silu_and_mul(x)


class ApplyRotary(nn.Module):
    """Rotary embedding of q and k; outputs keep the inputs' memory layout."""

    has_backward = True
    can_torch_compile = True

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _ops.apply_rotary(q, k, cos, sin)


class Attention(nn.Module):
    """Causal SDPA as one opaque op with grouped kv heads, so inductor cannot re-layout its inputs.

    (DESIGN §5: in a compiled Llama, inductor's SDPA call ran 3x slower than eager's.)
    """

    has_backward = True
    can_torch_compile = True

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return _ops.attention(q, k, v)
