"""The kernels as `torch.library` custom ops with fake (meta) and autograd registrations.

Being custom ops, they stay opaque calls under dynamo, AOTAutograd and inductor: the graph keeps
each as one node, with shapes and strides from the fake implementations. The Triton layers have
a backward op too; attention's backward recomputes through aten SDPA (see `_attention_backward`).

The namespace is the name this package was imported under (the loader uses the metadata `id`,
`kernel_fx_bundled_cuda`), so two copies of the kernel imported under different ids register
separate ops. Importing the same id again reuses the ops already registered in this process.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch
from torch.nn import functional as F

from . import _triton

NAMESPACE = re.sub(r"\W", "_", __name__.partition(".")[0])


def _lookup(name: str) -> Any:
    """`torch.ops.<NAMESPACE>.<name>.default`, or None when not registered yet."""
    try:
        return getattr(getattr(torch.ops, NAMESPACE), name).default
    except AttributeError:
        return None


def _register(
    name: str,
    schema: str,
    impl: Callable[..., Any],
    fake: Callable[..., Any],
    backward: Callable[..., Any] | None = None,
    setup_context: Callable[..., Any] | None = None,
) -> Any:
    """Define `NAMESPACE::name` unless it already exists; return its OpOverload.

    A second registration of the same name raises in torch.library, and a kernel package can be
    imported twice in one process (the same variant through two paths, or a test re-import).
    """
    existing = _lookup(name)
    if existing is not None:
        return existing
    op = torch.library.custom_op(f"{NAMESPACE}::{name}", impl, mutates_args=(), schema=schema)
    op.register_fake(fake)
    if backward is not None:
        op.register_autograd(backward, setup_context=setup_context)
    return _lookup(name)


# --- RMSNorm ----------------------------------------------------------------------------------------


def _rms_norm_out_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    # The reference returns `weight * normed.to(x.dtype)`: type promotion decides the dtype.
    return torch.promote_types(x.dtype, weight.dtype)


rms_norm_backward = _register(
    "rms_norm_backward",
    "(Tensor grad_out, Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)",
    impl=lambda grad_out, x, weight, eps: _triton.rms_norm_bwd(grad_out, x, weight, eps),
    fake=lambda grad_out, x, weight, eps: (x.new_empty(x.shape), weight.new_empty(weight.shape)),
)


def _rms_norm_impl(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _triton.rms_norm_fwd(x, weight, eps, out_dtype=_rms_norm_out_dtype(x, weight))[0]


def _rms_norm_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    x, weight, eps = inputs
    ctx.save_for_backward(x, weight)
    ctx.eps = eps


def _rms_norm_backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
    x, weight = ctx.saved_tensors
    dx, dw = rms_norm_backward(grad_out, x, weight, ctx.eps)
    return dx, dw, None


rms_norm = _register(
    "rms_norm",
    "(Tensor x, Tensor weight, float eps) -> Tensor",
    impl=_rms_norm_impl,
    fake=lambda x, weight, eps: x.new_empty(x.shape, dtype=_rms_norm_out_dtype(x, weight)),
    backward=_rms_norm_backward,
    setup_context=_rms_norm_setup,
)


# --- residual add + RMSNorm -----------------------------------------------------------------------


def _add_rms_norm_dtypes(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.dtype, torch.dtype]:
    """(normed dtype, new residual dtype), by the reference's type promotion."""
    sum_dtype = torch.promote_types(x.dtype, residual.dtype)
    return torch.promote_types(sum_dtype, weight.dtype), sum_dtype


add_rms_norm_backward = _register(
    "add_rms_norm_backward",
    "(Tensor grad_out, Tensor? grad_residual, Tensor new_residual, Tensor weight, float eps) -> (Tensor, Tensor)",
    impl=lambda grad_out, grad_residual, s, weight, eps: _triton.rms_norm_bwd(grad_out, s, weight, eps, grad_residual),
    fake=lambda grad_out, grad_residual, s, weight, eps: (s.new_empty(s.shape), weight.new_empty(weight.shape)),
)


def _add_rms_norm_impl(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    out_dtype, sum_dtype = _add_rms_norm_dtypes(x, residual, weight)
    y, s = _triton.rms_norm_fwd(x, weight, eps, residual=residual, out_dtype=out_dtype, residual_dtype=sum_dtype)
    return y, s


def _add_rms_norm_fake(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    out_dtype, sum_dtype = _add_rms_norm_dtypes(x, residual, weight)
    return x.new_empty(x.shape, dtype=out_dtype), x.new_empty(x.shape, dtype=sum_dtype)


def _add_rms_norm_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, _, weight, eps = inputs
    ctx.save_for_backward(output[1], weight)  # the new residual is the normalised input
    ctx.eps = eps


def _add_rms_norm_backward(ctx: Any, grad_out: torch.Tensor, grad_residual: torch.Tensor | None) -> tuple[Any, ...]:
    s, weight = ctx.saved_tensors
    ds, dw = add_rms_norm_backward(grad_out, grad_residual, s, weight, ctx.eps)
    return ds, ds, dw, None  # new_residual = x + residual: both receive the same gradient


add_rms_norm = _register(
    "add_rms_norm",
    "(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor, Tensor)",
    impl=_add_rms_norm_impl,
    fake=_add_rms_norm_fake,
    backward=_add_rms_norm_backward,
    setup_context=_add_rms_norm_setup,
)


# --- SiluAndMul -----------------------------------------------------------------------------------

silu_and_mul_backward = _register(
    "silu_and_mul_backward",
    "(Tensor grad_out, Tensor x) -> Tensor",
    impl=lambda grad_out, x: _triton.silu_and_mul_bwd(grad_out, x),
    fake=lambda grad_out, x: x.new_empty(x.shape),
)


def _silu_and_mul_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    ctx.save_for_backward(inputs[0])


def _silu_and_mul_backward(ctx: Any, grad_out: torch.Tensor) -> torch.Tensor:
    (x,) = ctx.saved_tensors
    return silu_and_mul_backward(grad_out, x)


silu_and_mul = _register(
    "silu_and_mul",
    "(Tensor x) -> Tensor",
    impl=lambda x: _triton.silu_and_mul_fwd(x),
    fake=lambda x: x.new_empty((*x.shape[:-1], x.shape[-1] // 2)),
    backward=_silu_and_mul_backward,
    setup_context=_silu_and_mul_setup,
)


# --- silu(gate) * up on two tensors (LlamaMLP's gating) -------------------------------------------


def _check_silu_mul(gate: torch.Tensor, up: torch.Tensor) -> None:
    if gate.shape != up.shape:
        raise ValueError(
            f"silu_mul needs gate and up of one shape (no broadcasting), got {tuple(gate.shape)} and {tuple(up.shape)}."
        )


def _silu_mul_impl(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    _check_silu_mul(gate, up)
    return _triton.silu_mul_fwd(gate, up)


def _silu_mul_fake(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    _check_silu_mul(gate, up)
    # The reference's `silu(gate) * up` promotes; the kernel writes a contiguous output.
    return gate.new_empty(gate.shape, dtype=torch.promote_types(gate.dtype, up.dtype))


silu_mul_backward = _register(
    "silu_mul_backward",
    "(Tensor grad_out, Tensor gate, Tensor up) -> (Tensor, Tensor)",
    impl=lambda grad_out, gate, up: _triton.silu_mul_bwd(grad_out, gate, up),
    fake=lambda grad_out, gate, up: (gate.new_empty(gate.shape), up.new_empty(up.shape)),
)


def _silu_mul_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    # Both projections' outputs; eager autograd keeps three tensors of this size (gate, silu, up).
    ctx.save_for_backward(*inputs)


def _silu_mul_backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gate, up = ctx.saved_tensors
    return silu_mul_backward(grad_out, gate, up)


silu_mul = _register(
    "silu_mul",
    "(Tensor gate, Tensor up) -> Tensor",
    impl=_silu_mul_impl,
    fake=_silu_mul_fake,
    backward=_silu_mul_backward,
    setup_context=_silu_mul_setup,
)


# --- rotary embedding -----------------------------------------------------------------------------


def _check_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"ApplyRotary needs q and k of shape (B, H, T, D), got {tuple(q.shape)} and {tuple(k.shape)}.")
    batch, _, seq, dim = q.shape
    if (k.shape[0], k.shape[2], k.shape[3]) != (batch, seq, dim):
        raise ValueError(f"ApplyRotary needs q and k with equal B, T and D, got {tuple(q.shape)} and {tuple(k.shape)}.")
    allowed = {(seq, dim), (1, seq, dim), (batch, seq, dim)}
    for name, table in (("cos", cos), ("sin", sin)):
        if tuple(table.shape) not in allowed:
            raise ValueError(
                f"ApplyRotary got {name} of shape {tuple(table.shape)} for q of shape {tuple(q.shape)}; "
                f"allowed are {sorted(allowed, key=len)}."
            )


def _apply_rotary_impl(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_rotary(q, k, cos, sin)
    return _triton.rotary(q, k, cos, sin)


def _apply_rotary_backward_impl(
    grad_q: torch.Tensor, grad_k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return _triton.rotary(grad_q, grad_k, cos, sin, backward=True)


apply_rotary_backward = _register(
    "apply_rotary_backward",
    "(Tensor grad_q, Tensor grad_k, Tensor cos, Tensor sin) -> (Tensor, Tensor)",
    impl=_apply_rotary_backward_impl,
    fake=lambda grad_q, grad_k, cos, sin: (_triton.rotary_empty_like(grad_q), _triton.rotary_empty_like(grad_k)),
)


def _apply_rotary_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    q, k, cos, sin = inputs
    ctx.save_for_backward(cos, sin)
    ctx.q_shape, ctx.k_shape = q.shape, k.shape


def _apply_rotary_backward(ctx: Any, grad_q: torch.Tensor | None, grad_k: torch.Tensor | None) -> tuple[Any, ...]:
    if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
        # Tables derived from positions never need a gradient; say so rather than drop it silently.
        raise NotImplementedError(
            "kernel-fx-bundled ApplyRotary treats cos and sin as constants: no gradient for them."
        )
    cos, sin = ctx.saved_tensors
    if grad_q is None:
        grad_q = cos.new_zeros(ctx.q_shape)
    if grad_k is None:
        grad_k = cos.new_zeros(ctx.k_shape)
    dq, dk = apply_rotary_backward(grad_q, grad_k, cos, sin)
    return dq, dk, None, None


apply_rotary = _register(
    "apply_rotary",
    "(Tensor q, Tensor k, Tensor cos, Tensor sin) -> (Tensor, Tensor)",
    impl=_apply_rotary_impl,
    fake=lambda q, k, cos, sin: (_triton.rotary_empty_like(q), _triton.rotary_empty_like(k)),
    backward=_apply_rotary_backward,
    setup_context=_apply_rotary_setup,
)


# --- attention --------------------------------------------------------------------------------------


def _sdpa_operand(t: torch.Tensor) -> torch.Tensor:
    """t as is in the two layouts SDPA kernels take without copies, else a contiguous copy.

    Those are contiguous (B, H, T, D) and its head transpose over (B, T, H, D) storage (what
    `proj(x).view(B, T, H, D).transpose(1, 2)` gives); on H100 (torch 2.11, cuDNN backend) both ran
    equally fast, so neither is copied into the other.
    """
    return t if t.is_contiguous() or t.transpose(1, 2).is_contiguous() else t.contiguous()


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal SDPA on (B, H, T, D) tensors with grouped kv heads."""
    q, k, v = _sdpa_operand(q), _sdpa_operand(k), _sdpa_operand(v)
    # `enable_gqa` lets the kernel read each kv head for its group of query heads: measured on
    # H100, 0.15 ms against 0.25 ms for repeating the kv heads first (B4 T2048 H16/8 D128 bf16).
    grouped = bool(q.shape[1] != k.shape[1])  # bool(): a SymBool when traced with dynamic shapes
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=grouped)


def _attention_empty(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Output buffer (B, Hq, T, Dv) in q's layout: head-transposed storage when q has it.

    Then `.transpose(1, 2).reshape(B, T, Hq * Dv)` after attention is free, as in eager.
    """
    batch, heads, seq, _ = q.shape
    if not q.is_contiguous() and q.transpose(1, 2).is_contiguous():
        return q.new_empty((batch, seq, heads, v.shape[-1])).transpose(1, 2)
    return q.new_empty((batch, heads, seq, v.shape[-1]))


def _in_layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t, copied into `like`'s strides if it has others: the fake implementation promises them."""
    if t.stride() == like.stride():
        return t
    return like.copy_(t)


def _attention_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _in_layout(_sdpa(q, k, v), _attention_empty(q, v))


def _attention_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _attention_backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
    # Recompute the forward under autograd rather than keep SDPA's internals (logsumexp, RNG
    # state), which differ per backend: one extra attention forward per backward. This runs at
    # autograd level, not inside an op, because an op's implementation runs with autograd off;
    # under AOTAutograd the recomputation is traced into the backward graph as aten SDPA ops.
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in ctx.saved_tensors]
        out = _sdpa(*leaves)
        return torch.autograd.grad(out, leaves, grad_out)


attention = _register(
    "attention",
    "(Tensor q, Tensor k, Tensor v) -> Tensor",
    impl=_attention_impl,
    fake=lambda q, k, v: _attention_empty(q, v),
    backward=_attention_backward,
    setup_context=_attention_setup,
)
