"""Kernels for the layers transformers marks (activations, the rotary function) and for the layers
kernel_fx's transformers integration marks (Gemma's norm, the attention core), in plain torch.

The same function as transformers' own code, composed differently: exact in float32 up to a few
ulps. Each class only has a `forward` that runs with `self` bound to the user's module.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["AttentionCore", "FastGELU", "GeLU", "GeluTanh", "GemmaRMSNorm", "NewGELU", "QuickGELU", "RotaryPosEmb", "SiLU"]


class SiLU(nn.Module):
    has_backward = True
    can_torch_compile = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - transformers' parameter name
        return F.silu(input)


class GeLU(nn.Module):
    has_backward = True
    can_torch_compile = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
        return F.gelu(input)


class GeluTanh(nn.Module):
    has_backward = True
    can_torch_compile = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
        return F.gelu(input, approximate="tanh")


class NewGELU(nn.Module):
    """The tanh approximation, as torch's fused op (transformers spells it out in five ops)."""

    has_backward = True
    can_torch_compile = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
        return F.gelu(input, approximate="tanh")


class FastGELU(nn.Module):
    """0.5 x (1 + tanh(0.79788456 x (1 + 0.044715 x^2))): the tanh approximation again."""

    has_backward = True
    can_torch_compile = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
        return F.gelu(input, approximate="tanh")


class QuickGELU(nn.Module):
    has_backward = True
    can_torch_compile = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
        return input * torch.sigmoid(1.702 * input)


class RotaryPosEmb(nn.Module):
    """transformers' `apply_rotary_pos_emb` on the two halves, without `rotate_half`'s negation copy."""

    has_backward = True
    can_torch_compile = True

    def forward(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1):
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)  # broadcast over heads
        cos1, cos2 = cos.chunk(2, dim=-1)
        sin1, sin2 = sin.chunk(2, dim=-1)

        def rotate(x: torch.Tensor) -> torch.Tensor:
            x1, x2 = x.chunk(2, dim=-1)  # (..., D/2) each
            return torch.cat((x1 * cos1 - x2 * sin1, x2 * cos2 + x1 * sin2), dim=-1)  # (..., D)

        return rotate(q), rotate(k)


class GemmaRMSNorm(nn.Module):
    """Gemma's norm: normalise in float32, scale by (1 + weight) in float32, then round once."""

    has_backward = True
    can_torch_compile = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), x.shape[-1:], eps=self.eps)  # (..., H)
        return (normed * (1.0 + self.weight.float())).type_as(x)


class AttentionCore(nn.Module):
    """Scaled dot-product attention with grouped kv heads; returns (B, T, H, D) like transformers.

    Causal without a mask where transformers' SDPA path would be (several queries, no mask), the
    given mask otherwise.
    """

    has_backward = True
    can_torch_compile = True

    def forward(self, query, key, value, attention_mask=None, dropout=0.0, scaling=None, is_causal=None):
        causal = query.shape[2] > 1 and attention_mask is None and (self.is_causal if is_causal is None else is_causal)
        if causal and key.shape[2] > query.shape[2]:  # prefill into a larger static cache
            key, value = key[:, :, : query.shape[2]], value[:, :, : query.shape[2]]
        scale = scaling if scaling is not None else 1 / math.sqrt(query.shape[-1])
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scale,
                                             is_causal=bool(causal), enable_gqa=bool(query.shape[1] != key.shape[1]))
        return out.transpose(1, 2).contiguous()  # (B, T, H, D)
