"""Triton kernels and their launchers; no autograd or torch.library here (see `_ops`).

All kernels are memory bound: each reads its inputs once and writes its outputs once, doing the
arithmetic in float32 registers and rounding once on store. Launchers take tensors whose last
dimension is contiguous and allocate their outputs.

With `TRITON_INTERPRET=1` set while this module is imported, the kernels run in Triton's
interpreter on CPU tensors (how the tests check them without a GPU).
"""

from __future__ import annotations

import functools
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # only this variant needs Triton; the CPU variant does not
    raise ImportError(
        "The torch-cuda variant of kernel-fx-bundled needs Triton (pip install triton); "
        f"importing it failed: {exc}"
    ) from exc

# `triton.jit` picks the interpreter when it decorates, so remember what it picked.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Rows handled by one program of a backward kernel are summed into one row of partial weight
# gradients; this many programs per SM keeps enough loads in flight without a large partial buffer.
_BWD_PROGRAMS_PER_SM = 4

# Element-wise kernels: elements of one row handled by one program.
_ELEMENTWISE_BLOCK = 4096


def _check_device(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if not t.is_cuda and not INTERPRETED:
            raise ValueError(
                f"kernel-fx-bundled Triton kernels need CUDA tensors, got a tensor on {t.device}; "
                "set TRITON_INTERPRET=1 before importing the kernels to run them on CPU."
            )


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # interpreter: a few programs, so the partial-sum path is still exercised
    return torch.cuda.get_device_properties(device).multi_processor_count


def _norm_settings(n: int) -> tuple[int, int]:
    """(BLOCK_N, num_warps) for one row of `n` elements held in registers by one program."""
    block = triton.next_power_of_2(n)
    if block > 65536:
        raise ValueError(f"RMSNorm rows of {n} elements exceed the supported 65536.")
    # ~8-16 elements per thread: wide vector loads without spilling registers.
    num_warps = min(max(block // 512, 1), 16)
    return block, num_warps


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """`t` as a 2-D (rows, last dim) tensor with a contiguous last dimension."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


# --- RMSNorm and fused residual add + RMSNorm -----------------------------------------------------


@triton.jit
def _rms_norm_fwd_kernel(
    X, R, W, Y, S,  # R, S: residual in and residual out (only with HAS_RESIDUAL)
    stride_x, stride_r, stride_y, stride_s,
    N, eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        # Round the sum to the residual's dtype before normalising it, as the reference does.
        s = (x + tl.load(R + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)).to(S.dtype.element_ty)
        tl.store(S + row * stride_s + cols, s, mask=mask)
        x = s.to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / N + eps)
    tl.store(Y + row * stride_y + cols, (x * rstd * w).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_bwd_kernel(
    DY, X, W, DX, DS, DW_PARTIAL,  # DS: gradient arriving at the residual output (HAS_DS)
    stride_dy, stride_x, stride_dx, stride_ds,
    M, N, eps,
    HAS_DS: tl.constexpr,
    ROWS_PER_PROGRAM: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # dx = rstd * (w*dy - xhat * mean(xhat * w*dy)),  dw = sum_rows(dy * xhat),  xhat = x * rstd.
    # rstd is recomputed from x (the row is in registers anyway) instead of saved by the forward.
    # Each program sums dw over its rows into one row of DW_PARTIAL, reduced afterwards.
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < N
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
    row_start = pid.to(tl.int64) * ROWS_PER_PROGRAM  # int64: row offsets cannot overflow
    # A constexpr trip count with masked rows past M, rather than tensor loop bounds, which
    # Triton's interpreter before 3.9 cannot iterate.
    for i in range(ROWS_PER_PROGRAM):
        row = row_start + i
        mask = cols < tl.where(row < M, N, 0)  # rows past M load nothing (`&` of masks breaks the interpreter)
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        wdy = w * dy
        # Both row sums are taken from the loaded values at once (not the second from xhat),
        # so the two reductions do not wait on each other.
        sum_xx = tl.sum(x * x, axis=0)
        sum_xwdy = tl.sum(x * wdy, axis=0)
        rstd = tl.rsqrt(sum_xx / N + eps)
        xhat = x * rstd
        dx = (wdy - xhat * (rstd * sum_xwdy / N)) * rstd
        if HAS_DS:
            dx += tl.load(DS + row * stride_ds + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * xhat
    tl.store(DW_PARTIAL + pid.to(tl.int64) * N + cols, dw, mask=col_mask)


def rms_norm_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    residual_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """y = rmsnorm(x [+ residual]) * weight; also the new residual x + residual when one is given.

    Outputs are contiguous, y in `out_dtype` and the new residual in `residual_dtype` (both
    default to x's dtype).
    """
    _check_device(x, weight)
    shape = x.shape
    x2 = _as_rows(x)  # (M, N)
    m, n = x2.shape
    y = torch.empty((m, n), dtype=out_dtype or x.dtype, device=x.device)  # (M, N)
    r2 = s = None
    if residual is not None:
        if residual.shape != shape:
            raise ValueError(f"AddRMSNorm needs equal shapes, got {tuple(shape)} and {tuple(residual.shape)}.")
        r2 = _as_rows(residual)  # (M, N)
        s = torch.empty((m, n), dtype=residual_dtype or x.dtype, device=x.device)  # (M, N)
    if weight.shape != (n,):
        raise ValueError(f"RMSNorm weight must have shape ({n},) for rows of {n}, got {tuple(weight.shape)}.")
    block, num_warps = _norm_settings(n)
    if m:
        _rms_norm_fwd_kernel[(m,)](
            x2, r2 if r2 is not None else x2, weight.contiguous(), y, s if s is not None else y,
            x2.stride(0), r2.stride(0) if r2 is not None else 0, y.stride(0), s.stride(0) if s is not None else 0,
            n, eps,
            HAS_RESIDUAL=residual is not None, BLOCK_N=block, num_warps=num_warps,
        )
    return y.view(shape), (s.view(shape) if s is not None else None)


def rms_norm_bwd(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    grad_residual: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad of x, grad of weight) for y = rmsnorm(x) * weight; `grad_residual` is added to the first."""
    _check_device(grad_out, x, weight)
    shape = x.shape
    x2, dy2 = _as_rows(x), _as_rows(grad_out)  # (M, N)
    ds2 = _as_rows(grad_residual) if grad_residual is not None else None
    m, n = x2.shape
    dx = torch.empty((m, n), dtype=x.dtype, device=x.device)
    block, num_warps = _norm_settings(n)
    # Rows per program rounded to a power of two: a constexpr, so few distinct compilations.
    rows_per_program = triton.next_power_of_2(triton.cdiv(max(m, 1), _sm_count(x.device) * _BWD_PROGRAMS_PER_SM))
    programs = max(triton.cdiv(m, rows_per_program), 1)
    # Every program writes its whole row, so no zero fill (one kernel less) unless none runs.
    dw_partial = (torch.empty if m else torch.zeros)((programs, n), dtype=torch.float32, device=x.device)  # (P, N)
    if m:
        _rms_norm_bwd_kernel[(programs,)](
            dy2, x2, weight.contiguous(), dx, ds2 if ds2 is not None else dy2, dw_partial,
            dy2.stride(0), x2.stride(0), dx.stride(0), ds2.stride(0) if ds2 is not None else 0,
            m, n, eps,
            HAS_DS=ds2 is not None, ROWS_PER_PROGRAM=rows_per_program, BLOCK_N=block, num_warps=num_warps,
        )
    return dx.view(shape), dw_partial.sum(0).to(weight.dtype)


# --- SiluAndMul and LlamaMLP's gating: silu(gate) * up --------------------------------------------
# One kernel pair serves both layers: gate and up are separate row-major operands with their own
# row strides, so SiluAndMul passes the two halves of its input as views (no copy) and LlamaMLP
# passes the outputs of its two projections (no concatenation).


@triton.jit
def _silu_mul_fwd_kernel(G, U, Y, stride_g, stride_u, stride_y, D, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < D
    gate = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    y = gate * tl.sigmoid(gate) * up
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _silu_mul_bwd_kernel(
    DY, G, U, DG, DU,
    stride_dy, stride_g, stride_u, stride_dg, stride_du,
    D, BLOCK: tl.constexpr,
):
    # d gate = dy * up * s * (1 + gate * (1 - s)),  d up = dy * silu(gate),  s = sigmoid(gate).
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < D
    gate = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(gate)
    d_gate = dy * up * s * (1.0 + gate * (1.0 - s))
    d_up = dy * gate * s
    tl.store(DG + row * stride_dg + cols, d_gate.to(DG.dtype.element_ty), mask=mask)
    tl.store(DU + row * stride_du + cols, d_up.to(DU.dtype.element_ty), mask=mask)


def _silu_mul_grid(m: int, d: int) -> tuple[tuple[int, int], int, int]:
    block = min(_ELEMENTWISE_BLOCK, triton.next_power_of_2(max(d, 1)))
    # 8 elements (16 B of bf16) per thread and load; H100 sweep at 16384 x 14336: 4096 / 16 warps
    # best by ~1% over 2048 / 8 (0.479 vs 0.483 ms forward, 0.802 vs 0.808 ms backward).
    num_warps = min(max(block // 256, 1), 16)
    return (m, triton.cdiv(d, block)), block, num_warps


def _launch_silu_mul_fwd(g2: torch.Tensor, u2: torch.Tensor, y: torch.Tensor) -> None:
    """y = silu(g2) * u2 on (M, d) operands whose rows are contiguous."""
    m, d = g2.shape
    grid, block, num_warps = _silu_mul_grid(m, d)
    if m and d:
        _silu_mul_fwd_kernel[grid](
            g2, u2, y, g2.stride(0), u2.stride(0), y.stride(0), d, BLOCK=block, num_warps=num_warps
        )


def _launch_silu_mul_bwd(
    dy2: torch.Tensor, g2: torch.Tensor, u2: torch.Tensor, dg: torch.Tensor, du: torch.Tensor
) -> None:
    """(dg, du) = gradients of silu(g2) * u2 for the output gradient dy2; all (M, d)."""
    m, d = g2.shape
    grid, block, num_warps = _silu_mul_grid(m, d)
    if m and d:
        _silu_mul_bwd_kernel[grid](
            dy2, g2, u2, dg, du,
            dy2.stride(0), g2.stride(0), u2.stride(0), dg.stride(0), du.stride(0),
            d, BLOCK=block, num_warps=num_warps,
        )


def silu_and_mul_fwd(x: torch.Tensor) -> torch.Tensor:
    """silu(x[..., :d]) * x[..., d:] in x's dtype."""
    _check_device(x)
    x2 = _as_rows(x)  # (M, 2d)
    m, d = x2.shape[0], x2.shape[1] // 2
    y = torch.empty((m, d), dtype=x.dtype, device=x.device)  # (M, d)
    _launch_silu_mul_fwd(x2[:, :d], x2[:, d:], y)
    return y.view(*x.shape[:-1], d)


def silu_and_mul_bwd(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Gradient of `silu_and_mul_fwd` with respect to x, shaped like x."""
    _check_device(grad_out, x)
    x2, dy2 = _as_rows(x), _as_rows(grad_out)  # (M, 2d), (M, d)
    m, d = x2.shape[0], x2.shape[1] // 2
    dx = torch.empty((m, 2 * d), dtype=x.dtype, device=x.device)  # (M, 2d)
    _launch_silu_mul_bwd(dy2, x2[:, :d], x2[:, d:], dx[:, :d], dx[:, d:])
    return dx.view(x.shape)


def silu_mul_fwd(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for two tensors of one shape, contiguous, in their promoted dtype."""
    _check_device(gate, up)
    g2, u2 = _as_rows(gate), _as_rows(up)  # (M, d) each
    m, d = g2.shape
    y = torch.empty((m, d), dtype=torch.promote_types(gate.dtype, up.dtype), device=gate.device)  # (M, d)
    _launch_silu_mul_fwd(g2, u2, y)
    return y.view(gate.shape)


def silu_mul_bwd(
    grad_out: torch.Tensor, gate: torch.Tensor, up: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of `silu_mul_fwd` with respect to gate and up, contiguous, in their dtypes."""
    _check_device(grad_out, gate, up)
    dy2, g2, u2 = _as_rows(grad_out), _as_rows(gate), _as_rows(up)  # (M, d) each
    m, d = g2.shape
    dg = torch.empty((m, d), dtype=gate.dtype, device=gate.device)  # (M, d)
    du = torch.empty((m, d), dtype=up.dtype, device=up.device)  # (M, d)
    _launch_silu_mul_bwd(dy2, g2, u2, dg, du)
    return dg.view(gate.shape), du.view(up.shape)


# --- rotary embedding -----------------------------------------------------------------------------


@triton.jit
def _rotate_heads(
    X, OUT, b, t,
    stride_xb, stride_xh, stride_xt, stride_ob, stride_oh, stride_ot,
    c1, c2, s1, s2, d, dmask,
    H: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr, BACKWARD: tl.constexpr,
):
    # forward:  o1 = x1*c1 - x2*s1,  o2 = x2*c2 + x1*s2   (Llama: x*cos + rotate_half(x)*sin)
    # backward: the transpose, g1 = d1*c1 + d2*s2,  g2 = d2*c2 - d1*s1
    for h0 in range(0, H, BLOCK_H):  # H is a constexpr (fixed per model): constant loop bounds
        h = h0 + tl.arange(0, BLOCK_H)
        mask = (h < H)[:, None] & dmask[None, :]  # (BLOCK_H, BLOCK_D)
        xp = X + b * stride_xb + t * stride_xt + h[:, None].to(tl.int64) * stride_xh + d[None, :]
        op = OUT + b * stride_ob + t * stride_ot + h[:, None].to(tl.int64) * stride_oh + d[None, :]
        x1 = tl.load(xp, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(xp + HALF, mask=mask, other=0.0).to(tl.float32)
        if BACKWARD:
            o1 = x1 * c1 + x2 * s2
            o2 = x2 * c2 - x1 * s1
        else:
            o1 = x1 * c1 - x2 * s1
            o2 = x2 * c2 + x1 * s2
        tl.store(op, o1.to(OUT.dtype.element_ty), mask=mask)
        tl.store(op + HALF, o2.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(
    Q, K, COS, SIN, QO, KO,
    T,
    stride_qb, stride_qh, stride_qt, stride_qob, stride_qoh, stride_qot,
    stride_kb, stride_kh, stride_kt, stride_kob, stride_koh, stride_kot,
    stride_cb, stride_ct,
    HQ: tl.constexpr, HK: tl.constexpr, HALF: tl.constexpr,
    BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_D: tl.constexpr,
    BACKWARD: tl.constexpr,
):
    # One program per (b, t): cos/sin are loaded once and applied to all heads of q and k, in
    # one launch (at Llama sizes the two tensors take ~40 us on H100: launches count).
    pid = tl.program_id(0).to(tl.int64)
    b = pid // T
    t = pid % T
    d = tl.arange(0, BLOCK_D)
    dmask = d < HALF
    cs = b * stride_cb + t * stride_ct + d
    c1 = tl.load(COS + cs, mask=dmask, other=0.0).to(tl.float32)[None, :]  # (1, BLOCK_D)
    c2 = tl.load(COS + cs + HALF, mask=dmask, other=0.0).to(tl.float32)[None, :]
    s1 = tl.load(SIN + cs, mask=dmask, other=0.0).to(tl.float32)[None, :]
    s2 = tl.load(SIN + cs + HALF, mask=dmask, other=0.0).to(tl.float32)[None, :]
    _rotate_heads(Q, QO, b, t, stride_qb, stride_qh, stride_qt, stride_qob, stride_qoh, stride_qot,
                  c1, c2, s1, s2, d, dmask, HQ, HALF, BLOCK_HQ, BACKWARD)
    _rotate_heads(K, KO, b, t, stride_kb, stride_kh, stride_kt, stride_kob, stride_koh, stride_kot,
                  c1, c2, s1, s2, d, dmask, HK, HALF, BLOCK_HK, BACKWARD)


def _rotary_tables(cos: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    """cos or sin as a (B, T, D) view with a contiguous last dim; broadcast batch has stride 0."""
    if cos.dim() == 2:  # (T, D) -> (1, T, D)
        cos = cos.unsqueeze(0)
    cos = cos.expand(batch, seq, cos.shape[-1])
    return cos if cos.stride(-1) == 1 else cos.contiguous()


def rotary_empty_like(x: torch.Tensor) -> torch.Tensor:
    """The output buffer of `rotary` for input x; the fake (meta) implementation uses it too.

    It keeps x's layout, e.g. the (B, T, H, D) storage behind a transposed (B, H, T, D) view, so
    the attention that follows sees the same strides as without the kernel.
    """
    out = torch.empty_like(x)
    return out if out.stride(-1) == 1 else torch.empty(x.shape, dtype=x.dtype, device=x.device)


def rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding of q (B, Hq, T, D) and k (B, Hk, T, D), or its transpose when `backward`.

    Outputs are laid out like the inputs (see `rotary_empty_like`).
    """
    _check_device(q, k, cos, sin)
    batch, q_heads, seq, dim = q.shape
    k_heads = k.shape[1]
    if dim % 2:
        raise ValueError(f"Rotary embedding needs an even head dim, got {dim}.")
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    cos, sin = _rotary_tables(cos, batch, seq), _rotary_tables(sin, batch, seq)  # (B, T, D)
    if cos.stride() != sin.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    q_out, k_out = rotary_empty_like(q), rotary_empty_like(k)
    half = dim // 2
    block_d = triton.next_power_of_2(half)

    def block_heads(heads: int) -> int:  # at most 4096 elements in a tile
        return max(min(triton.next_power_of_2(max(heads, 1)), 4096 // block_d), 1)

    block_hq, block_hk = block_heads(q_heads), block_heads(k_heads)
    num_warps = min(max(block_hq * block_d // 512, 1), 8)
    if batch * seq:
        _rotary_kernel[(batch * seq,)](
            q, k, cos, sin, q_out, k_out,
            seq,
            q.stride(0), q.stride(1), q.stride(2), q_out.stride(0), q_out.stride(1), q_out.stride(2),
            k.stride(0), k.stride(1), k.stride(2), k_out.stride(0), k_out.stride(1), k_out.stride(2),
            cos.stride(0), cos.stride(1),
            HQ=q_heads, HK=k_heads, HALF=half, BLOCK_HQ=block_hq, BLOCK_HK=block_hk, BLOCK_D=block_d,
            BACKWARD=backward, num_warps=num_warps,
        )
    return q_out, k_out
