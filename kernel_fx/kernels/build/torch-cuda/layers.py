"""Triton layers for the demo's extensible layers, each a call of one custom op (see `_ops`), and
for transformers' LlamaMLP (its own projections around one such op).

Each class only has a `forward`, which runs with `self` bound to the user's module (so it reads
`self.weight`, `self.variance_epsilon`). Arithmetic is in float32 with one rounding per output,
so results differ from the reference (which rounds between steps) by at most a few ulps.
Output dtypes follow the reference's type promotion.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from . import _ops

__all__ = ["AddRMSNorm", "ApplyRotary", "Attention", "LlamaMLP", "RMSNorm", "SiluAndMul"]


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


class LlamaMLP(nn.Module):
    """`down_proj(silu(gate_proj(x)) * up_proj(x))`: the module's own projections, the gating in one pass.

    The gating kernel reads the two projections' outputs once and writes their product, where
    eager reads and writes an extra intermediate (`silu(gate)`); the matmuls stay cuBLAS calls of
    the module's Linear layers (so their hooks, dtypes and any Linear subclass still apply).
    """

    has_backward = True
    can_torch_compile = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _require_silu(self)
        gated = _ops.silu_mul(self.gate_proj(x), self.up_proj(x))  # (..., I)
        return self.down_proj(gated)  # (..., H)


def _require_silu(module: nn.Module) -> None:
    """Refuse a gated MLP whose activation is not SiLU: the kernel fuses SiLU, not `act_fn`."""
    # transformers builds `act_fn` from `config.hidden_act` ("silu": its SiLUActivation, "swish":
    # nn.SiLU). The config is asked first: in a compiled graph `self` can be a stand-in whose
    # `act_fn` is a stand-in too, not an instance of the activation's class.
    hidden_act = getattr(getattr(module, "config", None), "hidden_act", None)
    if isinstance(hidden_act, str):
        activation: object = hidden_act
        silu = hidden_act in ("silu", "swish")
    else:
        activation = act = module.act_fn
        silu = isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation" or act is F.silu
    if not silu:
        raise ValueError(
            f"kernel-fx-bundled LlamaMLP computes silu(gate) * up, but this MLP's activation is {activation!r}; "
            "map LlamaMLP only for models with hidden_act 'silu' or 'swish'."
        )


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
