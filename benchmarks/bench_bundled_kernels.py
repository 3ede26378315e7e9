"""Benchmark the bundled CUDA kernels against eager and inductor on the original layers.

For each extensible layer of the demo model, at the sizes of DESIGN.md §5 in bf16:
  * correctness: relative error ||out - ref|| / ||ref|| of outputs and gradients against the
    original forward run in float64 on the same inputs;
  * speed: median time of the forward and of the backward alone, for the original forward in
    eager, the original forward under torch.compile (inductor), the Triton kernel, and the kernel
    under torch.compile;
  * bandwidth: the bytes an ideal one-pass implementation must move, divided by the time, and
    that as a share of the device-to-device copy bandwidth measured in the same run.
    (Attention is compute bound: it reports TFLOP/s instead.)
  * GPU time: the summed kernel times of one call (torch.profiler), which leave out the host's
    launch overhead that the wall-clock median includes.

Usage (on a GPU machine, from the repository root):

    python benchmarks/bench_bundled_kernels.py --out benchmarks/results/bundled_kernels.json

Needs only torch and triton besides kernel_fx itself.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import inspect
import json
import math
import platform
import sys
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from kernel_fx.demo import model as demo  # noqa: E402

VARIANT_DIR = REPO_ROOT / "kernel_fx" / "kernels" / "build" / "torch-cuda"
BF16 = 2  # bytes


# --- cases ----------------------------------------------------------------------------------------


@dataclass
class Case:
    """One layer at one size: how to build the module and inputs, and what an ideal pass costs."""

    name: str
    shape: str
    make_module: Callable[[], nn.Module]
    make_inputs: Callable[[], list[torch.Tensor]]
    grad_inputs: int  # the first `grad_inputs` inputs require grad
    fwd_bytes: int = 0
    bwd_bytes: int = 0
    fwd_flops: int = 0
    bwd_flops: int = 0


def _norm_module(cls: type[nn.Module], hidden: int) -> nn.Module:
    module = cls(hidden, eps=1e-6)
    with torch.no_grad():
        module.weight.copy_(1.0 + 0.1 * torch.randn(hidden))
    return module


def build_cases(scale: float) -> list[Case]:
    """The DESIGN sizes; `scale` < 1 shrinks the row counts and sequence length for a quick run."""
    rows = max(int(16384 * scale), 1)
    seq = max(int(2048 * scale), 16)
    hidden, inter = 4096, 14336
    batch, heads, kv_heads, dim = 4, 16, 8, 128

    def qkv_like(h: int) -> torch.Tensor:
        return torch.randn(batch, seq, h, dim).transpose(1, 2)  # (B, H, T, D) over (B, T, H, D) storage

    def rotary_inputs() -> list[torch.Tensor]:
        angles = torch.randn(batch, seq, dim // 2).repeat(1, 1, 2)  # (B, T, D)
        return [qkv_like(heads), qkv_like(kv_heads), angles.cos(), angles.sin()]

    qk_elems = batch * seq * (heads + kv_heads) * dim
    attn_flops = 4 * batch * heads * seq * seq * dim // 2  # two matmuls, causal half
    return [
        Case("RMSNorm", f"{rows}x{hidden}", lambda: _norm_module(demo.RMSNorm, hidden),
             lambda: [torch.randn(rows, hidden)], 1,
             fwd_bytes=2 * rows * hidden * BF16, bwd_bytes=3 * rows * hidden * BF16),
        Case("AddRMSNorm", f"{rows}x{hidden}", lambda: _norm_module(demo.AddRMSNorm, hidden),
             lambda: [torch.randn(rows, hidden), torch.randn(rows, hidden)], 2,
             fwd_bytes=4 * rows * hidden * BF16, bwd_bytes=4 * rows * hidden * BF16),
        Case("SiluAndMul", f"{rows}x(2*{inter})", demo.SiluAndMul,
             lambda: [torch.randn(rows, 2 * inter)], 1,
             fwd_bytes=3 * rows * inter * BF16, bwd_bytes=5 * rows * inter * BF16),
        Case("ApplyRotary", f"B{batch} T{seq} H{heads}/{kv_heads} D{dim}", demo.ApplyRotary, rotary_inputs, 2,
             fwd_bytes=2 * qk_elems * BF16 + 2 * batch * seq * dim * BF16,
             bwd_bytes=2 * qk_elems * BF16 + 2 * batch * seq * dim * BF16),
        Case("Attention", f"B{batch} T{seq} H{heads}/{kv_heads} D{dim}", demo.Attention,
             lambda: [qkv_like(heads), qkv_like(kv_heads), qkv_like(kv_heads)], 3,
             fwd_flops=attn_flops, bwd_flops=int(2.5 * attn_flops)),
    ]


# --- timing ---------------------------------------------------------------------------------------


def bench_ms(fn: Callable[[], Any], warmup: int, rep: int) -> float:
    """Median milliseconds of `fn` (triton's do_bench: L2 flushed between calls)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def copy_bandwidth_gbps(warmup: int, rep: int) -> float:
    """Device-to-device copy of 1 GiB, counting bytes read plus bytes written."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = bench_ms(functools.partial(dst.copy_, src), warmup, rep)
    return 2 * 2**30 / (ms * 1e-3) / 1e9


# --- running one implementation -------------------------------------------------------------------


def _outputs(result: Any) -> list[torch.Tensor]:
    return list(result) if isinstance(result, tuple) else [result]


def _leaves(case: Case, inputs: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    leaves = [t.detach().to("cuda", dtype) for t in inputs]
    for t in leaves[: case.grad_inputs]:
        t.requires_grad_()
    return leaves


def _grads_of(outs: list[torch.Tensor], seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator("cuda").manual_seed(seed)
    # bf16-representable values, so the float64 reference and the bf16 runs get the same ones.
    return [
        torch.randn(o.shape, generator=gen, device="cuda").to(torch.bfloat16).to(o.dtype) for o in outs
    ]


def run_reference(
    case: Case, module: nn.Module, inputs: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Outputs and gradients of the original forward in float64, from the bf16-rounded values.

    Rounding inputs and weights to bf16 first leaves only each implementation's own error.
    """
    ref_module = module.to("cuda", torch.bfloat16).to(torch.float64)
    leaves = _leaves(case, [t.to(torch.bfloat16) for t in inputs], torch.float64)
    outs = _outputs(type(module).forward(ref_module, *leaves))
    wrt = leaves[: case.grad_inputs] + list(ref_module.parameters())
    grads = torch.autograd.grad(outs, wrt, [g.double() for g in _grads_of(outs)])
    return [o.detach() for o in outs], [g.detach() for g in grads]


def rel_err(got: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    """The largest relative error over tensors: ||got - ref|| / ||ref||."""
    errs = [((g.double() - r).norm() / r.norm().clamp_min(1e-30)).item() for g, r in zip(got, ref, strict=True)]
    return max(errs) if errs else float("nan")


def measure(
    case: Case,
    forward: Callable[..., Any],
    module: nn.Module,
    inputs: list[torch.Tensor],
    ref: tuple[list[torch.Tensor], list[torch.Tensor]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Errors and median forward / backward times of `forward` (called with inputs)."""
    leaves = _leaves(case, inputs, torch.bfloat16)
    wrt = leaves[: case.grad_inputs] + list(module.parameters())
    outs = _outputs(forward(*leaves))  # first call also compiles
    grad_outs = _grads_of(outs)
    grads = torch.autograd.grad(outs, wrt, grad_outs, retain_graph=True)
    result: dict[str, Any] = {"fwd_rel_err": rel_err(outs, ref[0]), "bwd_rel_err": rel_err(list(grads), ref[1])}

    with torch.no_grad():
        result["fwd_ms"] = bench_ms(lambda: forward(*leaves), args.warmup, args.rep)
    # Backward alone: the graph of one forward, kept alive and walked again each call.
    backward = lambda: torch.autograd.grad(outs, wrt, grad_outs, retain_graph=True)  # noqa: E731
    result["bwd_ms"] = bench_ms(backward, args.warmup, args.rep)
    # GPU time alone (sum of kernel times of one call): the wall-clock median above also holds
    # launch overhead, which dominates small kernels on a slow host CPU.
    with torch.no_grad():
        result["fwd_gpu_ms"], fwd_kernels = gpu_kernels(lambda: forward(*leaves))
    result["bwd_gpu_ms"], bwd_kernels = gpu_kernels(backward)
    if args.profile:
        result["fwd_kernels"], result["bwd_kernels"] = fwd_kernels, bwd_kernels
    return result


def gpu_kernels(fn: Callable[[], Any], limit: int = 6) -> tuple[float, list[tuple[str, float]]]:
    """Total GPU milliseconds of one call of `fn`, and its longest kernels as (name, microseconds)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    # The attribute was renamed from cuda_time_total to device_time_total across torch versions.
    def total(e: Any) -> float:
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)

    events.sort(key=total, reverse=True)
    return sum(total(e) for e in events) / 1e3, [(e.key[:70], round(total(e), 1)) for e in events[:limit]]


def implementations(
    module: nn.Module, kernel_cls: type[nn.Module] | None, no_compile: bool
) -> dict[str, Callable[..., Any]]:
    """name -> callable(*inputs) for each implementation compared."""
    # The undecorated forward: kernel_fx's class decorator may wrap it with call-boundary
    # markers for its own backend, which are not what plain eager / inductor should be timed on.
    original = types.MethodType(inspect.unwrap(type(module).forward), module)
    impls: dict[str, Callable[..., Any]] = {"eager": original}
    if not no_compile:
        impls["inductor"] = torch.compile(original)
    if kernel_cls is not None:
        kernel = types.MethodType(kernel_cls.forward, module)
        impls["kernel"] = kernel
        if not no_compile:
            impls["kernel+inductor"] = torch.compile(kernel)
    return impls


def run_case(
    case: Case, kernels: types.ModuleType | None, copy_gbps: float, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """All implementations of one case: a row each, with errors recorded instead of raised."""
    torch.manual_seed(0)
    module = case.make_module()
    inputs = case.make_inputs()
    ref = run_reference(case, module, inputs)
    module = module.to("cuda", torch.bfloat16)
    kernel_cls = getattr(kernels.layers, case.name) if kernels is not None else None
    rows = []
    for impl, fn in implementations(module, kernel_cls, args.no_compile).items():
        row: dict[str, Any] = {"layer": case.name, "shape": case.shape, "impl": impl}
        try:
            torch._dynamo.reset()
            row.update(measure(case, fn, module, inputs, ref, args))
            for direction in ("fwd", "bwd"):
                ms, gpu_ms = row[f"{direction}_ms"], row[f"{direction}_gpu_ms"]
                nbytes, flops = getattr(case, f"{direction}_bytes"), getattr(case, f"{direction}_flops")
                if nbytes:
                    row[f"{direction}_gbps"] = nbytes / (ms * 1e-3) / 1e9
                    row[f"{direction}_pct_copy"] = 100 * row[f"{direction}_gbps"] / copy_gbps
                    if gpu_ms:
                        row[f"{direction}_gpu_pct_copy"] = 100 * nbytes / (gpu_ms * 1e-3) / 1e9 / copy_gbps
                if flops:
                    row[f"{direction}_tflops"] = flops / (ms * 1e-3) / 1e12
        except Exception as exc:  # keep going: one failing implementation must not lose the others
            row["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        rows.append(row)
        torch.cuda.empty_cache()
    eager = {d: rows[0].get(f"{d}_ms") for d in ("fwd", "bwd")}
    for row in rows:
        for d in ("fwd", "bwd"):
            if row.get(f"{d}_ms") and eager[d]:
                row[f"{d}_speedup_vs_eager"] = eager[d] / row[f"{d}_ms"]
    return rows


# --- output ---------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = [
        "layer", "shape", "impl", "pass", "median ms", "GB/s", "% copy", "TFLOP/s", "x eager",
        "GPU ms", "GPU % copy", "rel err",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if "error" in row:
            head = f"| {row['layer']} | {row['shape']} | {row['impl']} | - | error: {row['error'][:80]} |"
            lines.append(head + " - |" * 7)
            continue
        for d in ("fwd", "bwd"):
            cells = [
                row["layer"], row["shape"], row["impl"], d,
                _fmt(row.get(f"{d}_ms"), ".3f"),
                _fmt(row.get(f"{d}_gbps"), ".0f"),
                _fmt(row.get(f"{d}_pct_copy"), ".0f"),
                _fmt(row.get(f"{d}_tflops"), ".0f"),
                _fmt(row.get(f"{d}_speedup_vs_eager"), ".2f"),
                _fmt(row.get(f"{d}_gpu_ms"), ".3f"),
                _fmt(row.get(f"{d}_gpu_pct_copy"), ".0f"),
                _fmt(row.get(f"{d}_rel_err"), ".1e"),
            ]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def load_kernels() -> types.ModuleType:
    """The torch-cuda variant, imported by path under its metadata id as kernel_fx's loader does."""
    name = json.loads((VARIANT_DIR / "metadata.json").read_text())["id"]
    spec = importlib.util.spec_from_file_location(
        name, VARIANT_DIR / "__init__.py", submodule_search_locations=[str(VARIANT_DIR)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write results as JSON here")
    parser.add_argument("--layers", nargs="*", help="only these layers (default: all)")
    parser.add_argument("--scale", type=float, default=1.0, help="shrink row counts / sequence length (quick runs)")
    parser.add_argument("--warmup", type=int, default=25, help="do_bench warm-up, ms")
    parser.add_argument("--rep", type=int, default=100, help="do_bench repetitions, ms")
    parser.add_argument("--no-compile", action="store_true", help="skip the inductor rows")
    parser.add_argument("--profile", action="store_true", help="also list the GPU kernels each implementation runs")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("bench_bundled_kernels: needs a CUDA GPU.", file=sys.stderr)
        return 2
    try:
        kernels: types.ModuleType | None = load_kernels()
    except Exception:
        traceback.print_exc()
        kernels = None  # still report eager and inductor

    copy_gbps = copy_bandwidth_gbps(args.warmup, args.rep)
    rows: list[dict[str, Any]] = []
    for case in build_cases(args.scale):
        if args.layers and case.name not in args.layers:
            continue
        rows.extend(run_case(case, kernels, copy_gbps, args))
        print(f"done {case.name}", file=sys.stderr, flush=True)

    import triton

    env = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "copy_gbps": copy_gbps,
        "timing": f"triton.testing.do_bench median, warmup {args.warmup} ms, rep {args.rep} ms",
    }
    print(f"{env['device']}, torch {env['torch']}, triton {env['triton']}, {env['date']}")
    print(f"device-to-device copy: {copy_gbps:.0f} GB/s (read + write)\n")
    print(markdown_table(rows))
    if args.profile:
        print("\nGPU kernels of one call (us):")
        for row in rows:
            for d in ("fwd", "bwd"):
                if row.get(f"{d}_kernels"):
                    kernels_us = ", ".join(f"{name} {us}" for name, us in row[f"{d}_kernels"])
                    print(f"- {row['layer']} {row['impl']} {d}: {kernels_us}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"env": env, "results": rows}, indent=2) + "\n")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
