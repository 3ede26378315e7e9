"""Plain-torch CPU kernels for the demo's extensible layers and transformers' LlamaMLP.

Each class only has a `forward`, which runs with `self` bound to the user's module (so it reads
`self.weight`, `self.variance_epsilon`). They compute the same function as the reference layers
through fused or differently composed torch ops, so a swap is visible but the numbers are not.
Autograd and torch.compile trace straight through them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ._transformers import AttentionCore, FastGELU, GeLU, GeluTanh, GemmaRMSNorm, NewGELU, QuickGELU, RotaryPosEmb, SiLU

__all__ = [
    "AddRMSNorm", "ApplyRotary", "Attention", "AttentionCore", "FastGELU", "GeLU", "GeluTanh", "GemmaRMSNorm", "LlamaAttention", "LlamaAttentionCacheArg", "LlamaMLP", "NewGELU", "QuickGELU", "RMSNorm", "RotaryPosEmb", "SiLU", "SiluAndMul",
]


class RMSNorm(nn.Module):
    """`F.rms_norm` in float32, then the weight in the input dtype (Llama's rounding order)."""

    has_backward = True
    can_torch_compile = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(hidden_states.float(), hidden_states.shape[-1:], eps=self.variance_epsilon)  # (..., H)
        return self.weight * normed.to(hidden_states.dtype)


class AddRMSNorm(nn.Module):
    """Residual add, then the same normalisation as `RMSNorm`; returns `(normed, new_residual)`."""

    has_backward = True
    can_torch_compile = True

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        residual = residual + hidden_states  # (..., H), rounded to the input dtype as the reference
        normed = F.rms_norm(residual.float(), residual.shape[-1:], eps=self.variance_epsilon)  # (..., H)
        return self.weight * normed.to(residual.dtype), residual


class SiluAndMul(nn.Module):
    """`silu(gate) * up` with gate and up the two halves of the last dimension."""

    has_backward = True
    can_torch_compile = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)  # (..., d) each
        return F.silu(gate) * up


class LlamaMLP(nn.Module):
    """`down_proj(silu(gate_proj(x)) * up_proj(x))` through the module's own projections.

    The same function as transformers' LlamaMLP with `hidden_act="silu"`, which it checks: the
    forward it replaces calls `act_fn`, this one always SiLU.
    """

    has_backward = True
    can_torch_compile = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _require_silu(self)
        gate, up = self.gate_proj(x), self.up_proj(x)  # (..., I) each
        return self.down_proj(F.silu(gate) * up)  # (..., H)


def _require_silu(module: nn.Module) -> None:
    """Refuse a gated MLP whose activation is not SiLU: the kernel computes SiLU, not `act_fn`."""
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
    """Rotary embedding written on the two halves instead of `rotate_half` + `cat` per term."""

    has_backward = True
    can_torch_compile = True

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if cos.dim() == 2:  # (T, D) -> (1, T, D)
            cos, sin = cos.unsqueeze(0), sin.unsqueeze(0)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, D)
        cos1, cos2 = cos.chunk(2, dim=-1)  # (B, 1, T, D/2) each
        sin1, sin2 = sin.chunk(2, dim=-1)

        def rotate(x: torch.Tensor) -> torch.Tensor:
            x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, D/2) each
            return torch.cat((x1 * cos1 - x2 * sin1, x2 * cos2 + x1 * sin2), dim=-1)  # (B, H, T, D)

        return rotate(q), rotate(k)


class Attention(nn.Module):
    """Causal SDPA that lets SDPA group the kv heads (`enable_gqa`) instead of copying them."""

    has_backward = True
    can_torch_compile = True

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=bool(q.shape[1] != k.shape[1]))


class LlamaAttention(nn.Module):
    """transformers' LlamaAttention in plain torch: rotary via complex halves, then torch's SDPA."""

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
    cos, sin = (t.unsqueeze(1) for t in position_embeddings)  # (B, 1, T, D)
    q, k = (_rotate(t, cos, sin) for t in (q, k))
    if cache is not None:  # transformers >= 5.24 passes kwargs on to the cache
        k, v = cache.update(k, v, self.layer_idx, **({"kwargs": kwargs} if pass_kwargs else {}))
    dropout = self.attention_dropout if self.training else 0.0
    causal = q.shape[2] > 1 and attention_mask is None and getattr(self, "is_causal", True)
    if causal and k.shape[2] > q.shape[2]:  # prefill into a larger static cache, as transformers slices
        k, v = k[:, :, : q.shape[2]], v[:, :, : q.shape[2]]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=dropout, scale=self.scaling,
                                         is_causal=causal, enable_gqa=q.shape[1] != k.shape[1])
    out = out.transpose(1, 2).reshape(*input_shape, -1).contiguous()  # (B, T, H * D)
    return self.o_proj(out), None


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]  # (..., D/2) each
    c1, s1 = cos[..., :half], sin[..., :half]
    c2, s2 = cos[..., half:], sin[..., half:]
    return torch.cat((x1 * c1 - x2 * s1, x2 * c2 + x1 * s2), dim=-1)
