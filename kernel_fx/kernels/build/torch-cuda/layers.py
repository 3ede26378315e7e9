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

from ._transformers import AttentionCore, FastGELU, GeLU, GeluTanh, GemmaRMSNorm, NewGELU, QuickGELU, RotaryPosEmb, SiLU

from . import _ops

__all__ = [
    "AddRMSNorm", "ApplyRotary", "Attention", "AttentionCore", "FastGELU", "GeLU", "GeluTanh", "GemmaRMSNorm", "LlamaMLP", "NewGELU", "QuickGELU", "RMSNorm", "RotaryPosEmb", "SiLU", "SiluAndMul",
]


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


class LlamaAttention(nn.Module):
    """transformers' LlamaAttention with the rotary embedding and causal SDPA as fused, opaque ops.

    The projections stay the module's own Linear layers. Rotary runs as one kernel over q and k;
    the causal self-attention (no mask, no cache growth, no dropout) is one opaque op, so a
    compiler cannot hand SDPA re-laid-out inputs (DESIGN §5). Anything else takes torch's SDPA
    with the mask, exactly as transformers' `sdpa_attention_forward` does.
    """

    has_backward = True
    can_torch_compile = True

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, **kwargs):
        return _llama_attention(self, hidden_states, position_embeddings, attention_mask, past_key_values, kwargs, False)


class LlamaAttentionCacheArg(nn.Module):
    """`LlamaAttention` for transformers >= 5.24, whose forward names its cache `cache`."""

    has_backward = True
    can_torch_compile = True

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None, **kwargs):
        return _llama_attention(self, hidden_states, position_embeddings, attention_mask, cache, kwargs, True)


def _llama_attention(self, hidden_states, position_embeddings, attention_mask, cache, kwargs, pass_kwargs):
    """The body of both LlamaAttention kernels; `self` is the user's (or a stand-in) module."""
    input_shape = hidden_states.shape[:-1]  # (B, T)
    hidden_shape = (*input_shape, -1, self.head_dim)
    q = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, H, T, D)
    k = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, KV, T, D)
    v = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, KV, T, D)
    cos, sin = position_embeddings  # (B, T, D) each
    q, k = _ops.apply_rotary(q, k, cos, sin)
    if cache is not None:  # transformers >= 5.24 passes kwargs on to the cache
        k, v = cache.update(k, v, self.layer_idx, **({"kwargs": kwargs} if pass_kwargs else {}))
    dropout = self.attention_dropout if self.training else 0.0
    causal = q.shape[2] > 1 and attention_mask is None and getattr(self, "is_causal", True)
    if causal and dropout == 0.0 and q.shape[2] == k.shape[2] and self.scaling == self.head_dim**-0.5:
        out = _ops.attention(q, k, v)  # (B, H, T, D)
    else:
        if causal and k.shape[2] > q.shape[2]:  # prefill into a larger static cache, as transformers slices
            k, v = k[:, :, : q.shape[2]], v[:, :, : q.shape[2]]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=dropout, scale=self.scaling,
                                             is_causal=causal, enable_gqa=q.shape[1] != k.shape[1])
    out = out.transpose(1, 2).reshape(*input_shape, -1).contiguous()  # (B, T, H * D)
    return self.o_proj(out), None
