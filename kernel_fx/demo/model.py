"""A small Llama-style decoder in plain torch whose hot layers are extensible.

The five extensible classes (`RMSNorm`, `AddRMSNorm`, `SiluAndMul`, `ApplyRotary`, `Attention`)
carry `kernel_layer_name` and the reference forward a kernel must match: same signature, same
function. Everything else (projections, embeddings, the residual stream) is ordinary torch.

One decoder layer, with the residual stream `x`:

    h = input_layernorm(x)                         # RMSNorm
    h = self_attn(h, cos, sin)                     # q/k/v -> ApplyRotary -> Attention -> o
    h, x = post_attention_layernorm(h, x)          # AddRMSNorm: x = h + x; h = norm(x)
    x = x + mlp(h)                                 # gate_up -> SiluAndMul -> down

>>> model = build_demo_model(DemoConfig(num_hidden_layers=1))
>>> model(torch.zeros(2, 5, dtype=torch.long)).shape
torch.Size([2, 5, 1000])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from kernel_fx.layers import use_kernel_forward_from_hub


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo model; the field names follow transformers' `LlamaConfig`."""

    vocab_size: int = 1000
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    max_position_embeddings: int = 512
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"DemoConfig.{name} must be a positive int, got {value!r}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"DemoConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})."
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"DemoConfig.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads})."
            )
        if self.head_dim % 2:
            raise ValueError(f"DemoConfig head_dim ({self.head_dim}) must be even for rotary embeddings.")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"DemoConfig.rms_norm_eps must be > 0, got {self.rms_norm_eps!r}.")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


# --- extensible layers: their forwards are the reference every kernel must match --------------


@use_kernel_forward_from_hub("RMSNorm")
class RMSNorm(nn.Module):
    """Llama's RMSNorm: normalise in float32, scale by `weight` in the input dtype."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)  # (..., H)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)  # (..., 1)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.variance_epsilon}"


@use_kernel_forward_from_hub("AddRMSNorm")
class AddRMSNorm(nn.Module):
    """Residual add then RMSNorm; returns `(normed, new_residual)` so a kernel can fuse both."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        residual = hidden_states + residual  # (..., H), in the input dtype
        input_dtype = residual.dtype
        normed = residual.to(torch.float32)
        variance = normed.pow(2).mean(-1, keepdim=True)  # (..., 1)
        normed = normed * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * normed.to(input_dtype), residual

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.variance_epsilon}"


@use_kernel_forward_from_hub("SiluAndMul")
class SiluAndMul(nn.Module):
    """SwiGLU gate: `silu(x[..., :d]) * x[..., d:]` with `d = x.shape[-1] // 2`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1] // 2
        return F.silu(x[..., :d]) * x[..., d:]  # (..., d)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """`[x1, x2] -> [-x2, x1]` on the last dimension (Llama's convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@use_kernel_forward_from_hub("ApplyRotary")
class ApplyRotary(nn.Module):
    """Rotary position embedding applied to q and k, as transformers' `apply_rotary_pos_emb`.

    q: (B, Hq, T, D), k: (B, Hk, T, D); cos, sin: (B, T, D), or (T, D) shared by the batch.
    """

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if cos.dim() == 2:  # (T, D) -> (1, T, D)
            cos, sin = cos.unsqueeze(0), sin.unsqueeze(0)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, D): broadcast over heads
        q_embed = q * cos + rotate_half(q) * sin
        k_embed = k * cos + rotate_half(k) * sin
        return q_embed, k_embed


@use_kernel_forward_from_hub("Attention")
class Attention(nn.Module):
    """Causal scaled-dot-product attention with grouped kv heads.

    q: (B, Hq, T, D), k and v: (B, Hk, T, D) with Hq a multiple of Hk; returns (B, Hq, T, D).
    """

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n_rep = q.shape[1] // k.shape[1]
        if n_rep > 1:  # repeat each kv head for its group of query heads, as Llama's repeat_kv
            k = k.repeat_interleave(n_rep, dim=1)  # (B, Hq, T, D)
            v = v.repeat_interleave(n_rep, dim=1)  # (B, Hq, T, D)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


# --- the rest of the model -----------------------------------------------------------------------


class RotaryEmbedding(nn.Module):
    """cos and sin tables of shape (B, T, head_dim) for given positions, in the dtype of `x`."""

    def __init__(self, config: DemoConfig) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        self.theta = config.rope_theta

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Frequencies are rebuilt in float32 on each call instead of kept in a buffer, which
        # `model.to(torch.bfloat16)` would round (bf16 angles are wrong past a few hundred tokens).
        exponents = torch.arange(0, self.head_dim, 2, device=x.device, dtype=torch.float32) / self.head_dim
        inv_freq = 1.0 / (self.theta**exponents)  # (D/2,)
        freqs = position_ids[..., None].float() * inv_freq  # (B, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, D)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta}"


class DemoAttention(nn.Module):
    """Projections around the extensible rotary and attention layers."""

    def __init__(self, config: DemoConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        self.rotary = ApplyRotary()
        self.attn = Attention()

    def forward(self, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = hidden_states.shape  # (B, T, C)
        # Heads split off the projections and moved before T: (B, H, T, D) views of (B, T, H, D).
        q = self.q_proj(hidden_states).view(batch, seq, -1, self.head_dim).transpose(1, 2)  # (B, Hq, T, D)
        k = self.k_proj(hidden_states).view(batch, seq, -1, self.head_dim).transpose(1, 2)  # (B, Hk, T, D)
        v = self.v_proj(hidden_states).view(batch, seq, -1, self.head_dim).transpose(1, 2)  # (B, Hk, T, D)
        q, k = self.rotary(q, k, cos, sin)
        out = self.attn(q, k, v)  # (B, Hq, T, D)
        out = out.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim)  # (B, T, Hq*D)
        return self.o_proj(out)  # (B, T, C)


class DemoMLP(nn.Module):
    """Gated MLP with the gate and up projections fused into one matmul."""

    def __init__(self, config: DemoConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.act = SiluAndMul()
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))  # (B, T, C)


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer; the add after attention is fused into `post_attention_layernorm`."""

    def __init__(self, config: DemoConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = DemoAttention(config)
        self.post_attention_layernorm = AddRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = DemoMLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = self.self_attn(self.input_layernorm(x), cos, sin)  # (B, T, C)
        h, x = self.post_attention_layernorm(h, x)  # x <- x + attn; h <- norm(x)
        return x + self.mlp(h)  # (B, T, C)


class DemoModel(nn.Module):
    """Token ids (B, T) -> logits (B, T, vocab)."""

    def __init__(self, config: DemoConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.rotary_emb = RotaryEmbedding(config)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        batch, seq = input_ids.shape
        if seq > self.config.max_position_embeddings:
            raise ValueError(
                f"Sequence length {seq} exceeds max_position_embeddings={self.config.max_position_embeddings}."
            )
        if position_ids is None:
            position_ids = torch.arange(seq, device=input_ids.device).unsqueeze(0).expand(batch, seq)  # (B, T)
        x = self.embed_tokens(input_ids)  # (B, T, C)
        cos, sin = self.rotary_emb(x, position_ids)  # (B, T, D) each
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))  # (B, T, V)


def build_demo_model(
    config: DemoConfig | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> DemoModel:
    """A `DemoModel` in eval mode with deterministic random weights (norm weights perturbed from 1).

    >>> a, b = build_demo_model(seed=1), build_demo_model(seed=1)
    >>> all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    True
    """
    config = config or DemoConfig()
    # Built on the meta device and filled from a private generator: no default initialisation
    # runs, so building the demo neither costs time nor moves the caller's global RNG.
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        model = DemoModel(config)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "norm.weight":
                # Non-unit norm weights, so a kernel that ignores `weight` fails the comparison.
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(0.02 * torch.randn(param.shape, generator=generator))
    return model.to(device=device, dtype=dtype).eval()
