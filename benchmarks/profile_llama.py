"""Where the time goes: top CUDA kernels of one Llama forward, eager+kernelize vs hubkernels vs inductor.

    PYTHONPATH=. python benchmarks/profile_llama.py
"""

from __future__ import annotations

import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, "benchmarks")
from bench_models import llama_model, prepare  # noqa: E402


def top_kernels(fn, inputs, n: int = 14) -> str:
    with torch.no_grad():
        for _ in range(3):
            fn(**inputs)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn(**inputs)
            torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=n, max_name_column_width=70)


def main() -> None:
    base, inputs, mapping = llama_model("cuda", torch.bfloat16, quick=False)
    for variant in sys.argv[1:] or ["eager+kernelize", "hubkernels", "inductor"]:
        torch._dynamo.reset()
        print(f"==== {variant}")
        run = prepare(variant, base, mapping, training=False)
        print(top_kernels(run, inputs))
        backend = getattr(run, "backend", None)
        if backend is not None:  # which attention ops the rewritten graphs hold
            for record in backend.report.graphs:
                print({op: n for op, n in record.after.ops.items() if "attention" in op or "kernel_fx" in op})


if __name__ == "__main__":
    main()
