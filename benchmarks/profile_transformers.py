"""Where the time goes in the transformers benchmarks: top CUDA kernels per variant, and for decode the
host time per token against the device time (what a CUDA graph or a leaner loop could win).

    PYTHONPATH=. python benchmarks/profile_transformers.py --model llama --call forward --variants eager+kernelize,hubkernels
    PYTHONPATH=. python benchmarks/profile_transformers.py --model llama --call decode --variants transformers-compile
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import kernel_fx
from kernel_fx.integrations import transformers_mapping

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_transformers import build, decode_model, variant_model  # noqa: E402 - the benchmark's own variants


def profiled(fn, warmup: int = 3) -> tuple[str, float, float]:
    """(top-kernels table, wall ms, summed device ms) of one `fn()` after warm-up."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) * 1e3
    device = sum(e.self_device_time_total for e in prof.key_averages()) / 1e3
    return prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=60), wall, device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama")
    parser.add_argument("--call", choices=("forward", "decode"), default="forward")
    parser.add_argument("--variants", default="eager+kernelize,hubkernels,inductor")
    parser.add_argument("--batch", type=int, default=1, help="decode batch")
    args = parser.parse_args()
    base = build(args.model, "cuda", torch.bfloat16, quick=False)
    kernel_fx.register_kernel_mapping(transformers_mapping())
    for variant in args.variants.split(","):
        torch._dynamo.reset()
        fn, new = call_of(args.call, variant, base, args.batch)
        with torch.no_grad():
            table, wall, device = profiled(fn, warmup=2)
        print(f"==== {args.model} {args.call} {variant}: wall {wall / new:.3f} ms, device {device / new:.3f} ms"
              f"{' per token' if args.call == 'decode' else ''}")
        print(table)


def call_of(call: str, variant: str, base: torch.nn.Module, batch: int):
    """(the call to profile, tokens it produces) for one variant."""
    if call == "forward":
        model, _ = variant_model(variant, base, training=False)
        ids = torch.randint(0, base.config.vocab_size, (4, 2048), device="cuda")
        return (lambda: model(ids).logits), 1
    model, extra, _ = decode_model(variant, base, "cuda")
    prompt = torch.randint(0, base.config.vocab_size, (batch, 128), device="cuda")
    new = 64
    return (lambda: model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, min_new_tokens=new,
                                   do_sample=False, cache_implementation="static", **extra)), new

if __name__ == "__main__":
    main()
