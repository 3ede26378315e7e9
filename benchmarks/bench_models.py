"""Whole-model benchmark: eager, eager+kernelize, inductor and hubkernels, forward and training.

    PYTHONPATH=. python benchmarks/bench_models.py --model demo --out benchmarks/results
    PYTHONPATH=. python benchmarks/bench_models.py --model llama --out benchmarks/results

Method (see the device tool's METHOD.md): outputs are checked against eager first; times are
medians of CUDA-event timings after warm-up (host timer on CPU); peak memory is
`torch.cuda.max_memory_allocated` over the timed calls. Writes `<model>-<device>.json` and
`.md` with the device, torch and triton versions, date and the exact command.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import kernel_fx
from kernel_fx.defaults import default_mapping

# -- models ---------------------------------------------------------------------------------------

def demo_model(device: str, dtype: torch.dtype, quick: bool, use_cache: bool = False) -> tuple[nn.Module, dict, Callable]:
    from kernel_fx.demo.model import DemoConfig, build_demo_model

    config = DemoConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=2 if quick else 8,
                        num_attention_heads=16, num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096)
    batch, seq = (2, 512) if quick else (4, 2048)
    if device == "cpu":
        config = DemoConfig(num_hidden_layers=2)
        batch, seq = 2, 64
    model = build_demo_model(config, device=device, dtype=dtype)
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    return model, {"input_ids": ids}, default_mapping


def llama_model(device: str, dtype: torch.dtype, quick: bool, use_cache: bool = False) -> tuple[nn.Module, dict, Callable]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from kernel_fx.integrations.llama import llama_mapping, mark_llama

    mark_llama()
    config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=2 if quick else 8,
                         num_attention_heads=16, num_key_value_heads=8, vocab_size=32000,
                         max_position_embeddings=4096, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype)
    batch, seq = (2, 512) if quick else (4, 2048)
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    # use_cache=False (the figures of 2026-11-24): a prefill or training step without a cache.
    # --use-cache times the default call, model(ids): hubkernels then puts attention in at trace time.
    return model, {"input_ids": ids, "use_cache": use_cache}, llama_mapping


MODELS = {"demo": demo_model, "llama": llama_model}


def logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


# -- variants -------------------------------------------------------------------------------------

def prepare(variant: str, base: nn.Module, mapping: Callable[[], dict], training: bool) -> Callable[..., Any]:
    model = copy.deepcopy(base).train(training)
    if variant.endswith("+causal-skip"):  # transformers models: keep is_causal SDPA under compile
        from kernel_fx.integrations.llama import skip_causal_mask_when_compiling

        skip_causal_mask_when_compiling(model)
        variant = variant.removesuffix("+causal-skip")
    if variant == "eager":
        return model
    if variant == "eager+kernelize":
        with kernel_fx.use_kernel_mapping(mapping()):
            kernel_fx.kernelize(model)
        return model
    if variant == "inductor":
        return torch.compile(model)
    if variant.startswith("hubkernels"):
        from kernel_fx.compile.backend import HubKernelsBackend

        # The backend object rather than its entry-point name: this also runs from a source tree.
        backend = HubKernelsBackend(**({"autotune": True} if variant.endswith("autotune") else {}))
        with kernel_fx.use_kernel_mapping(mapping()):
            compiled = torch.compile(model, backend=backend)
        scoped = mapping()

        def run(**inputs):
            with kernel_fx.use_kernel_mapping(scoped):  # the pass reads the mapping when it compiles
                return compiled(**inputs)

        run.backend = backend  # type: ignore[attr-defined]
        return run
    raise ValueError(f"unknown variant {variant!r}")


def timed(fn: Callable[[], Any], device: str, warmup: int, repeats: int) -> tuple[float, float]:
    """(median ms, peak MiB) of `fn()` after `warmup` calls."""
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times), torch.cuda.max_memory_allocated() / 2**20
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), float("nan")


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def measure(variant: str, base: nn.Module, inputs: dict, mapping: Callable, device: str, training: bool,
            reference: torch.Tensor, args: argparse.Namespace) -> dict:
    run = prepare(variant, base, mapping, training)

    def step():
        if training:
            out = logits(run(**inputs))
            out.float().square().mean().backward()
            return out
        with torch.no_grad():
            return logits(run(**inputs))

    t0 = time.perf_counter()
    first = step()
    first_s = time.perf_counter() - t0
    error = rel_error(first.detach(), reference)
    median, peak = timed(step, device, args.warmup, args.repeats)
    backend = getattr(run, "backend", None)
    report = backend.report if backend is not None else None
    return {"variant": variant, "mode": "train" if training else "forward", "median_ms": median, "peak_mib": peak,
            "rel_error_vs_eager": error, "first_call_s": first_s,
            "report_summary": report.summary() if report is not None else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="demo")
    parser.add_argument("--variants", default="eager,eager+kernelize,inductor,hubkernels")
    parser.add_argument("--modes", default="forward,train")
    parser.add_argument("--quick", action="store_true", help="a smaller model, for smoke runs")
    parser.add_argument("--use-cache", action="store_true", help="Llama: call model(ids) with its KV cache (the default call)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="directory for <model>-<device>.json/.md")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    base, inputs, mapping = MODELS[args.model](device, dtype, args.quick, args.use_cache)
    rows = []
    for mode in args.modes.split(","):
        training = mode == "train"
        with torch.no_grad():
            reference = logits(copy.deepcopy(base).train(training)(**inputs)).detach()
        for variant in args.variants.split(","):
            torch._dynamo.reset()
            try:
                row = measure(variant, base, inputs, mapping, device, training, reference, args)
            except Exception as exc:  # a failing variant is a result too; the others still run
                row = {"variant": variant, "mode": mode, "error": f"{type(exc).__name__}: {exc}"[:500]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {
        "model": args.model, "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "triton": _version("triton"), "transformers": _version("transformers"),
        "python": platform.python_version(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "PYTHONPATH=. python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        "dtype": str(dtype), "inputs": {k: list(v.shape) if hasattr(v, "shape") else v for k, v in inputs.items()},
    }
    table = markdown(rows)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"{args.model}{'-quick' if args.quick else ''}-{device}"
        (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        header = "\n".join(f"- {k}: {v}" for k, v in meta.items())
        (args.out / f"{stem}.md").write_text(f"# {args.model} benchmark\n\n{header}\n\n{table}\n")


def markdown(rows: list[dict]) -> str:
    from tabulate import tabulate

    out = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        mine = [r for r in rows if r["mode"] == mode]
        base = {r["variant"]: r.get("median_ms") for r in mine}
        eager, inductor = base.get("eager"), base.get("inductor")
        table = [
            [r["variant"], f"{r['median_ms']:.2f}" if "median_ms" in r else r.get("error", "")[:80],
             _ratio(eager, r.get("median_ms")), _ratio(inductor, r.get("median_ms")),
             f"{r['rel_error_vs_eager']:.1e}" if "rel_error_vs_eager" in r else "", f"{r.get('peak_mib', float('nan')):.0f}"]
            for r in mine
        ]
        out.append(f"### {mode}\n\n" + tabulate(table, headers=["variant", "median ms", "× eager", "× inductor", "rel err", "peak MiB"], tablefmt="github"))
    return "\n\n".join(out)


def _ratio(base: float | None, value: float | None) -> str:
    return f"{base / value:.2f}" if base and value else ""


def _version(name: str) -> str | None:
    try:
        return __import__(name).__version__
    except Exception:
        return None


if __name__ == "__main__":
    main()
