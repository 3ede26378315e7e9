"""transformers models as users call them: forward with a KV cache, a training step, and decode.

    PYTHONPATH=. python benchmarks/bench_transformers.py --model llama --out benchmarks/results
    PYTHONPATH=. python benchmarks/bench_transformers.py --model qwen3 --calls decode --quick   # CPU smoke run

Models: random-weight Llama, Qwen3 and Mixtral, h2048-class configs, bf16 on CUDA (float32 and tiny
on CPU). Calls: `forward` (`model(ids)` with its cache, b4 x s2048), `train` (a step with a
cross-entropy loss on labels, forward + backward), `decode` (`generate` with a static cache,
tokens/s at batch 1 and 16; `decode-graphs` adds `mode="reduce-overhead"` CUDA graphs). Variants:
eager, eager+kernelize (kernel_fx's transformers integration), inductor, hubkernels,
hubkernels+autotune. Each row carries its share of the physical limit: forward and train FLOPs at
the device's bf16 peak (`--peak-tflops`, H100 SXM dense: 989), decode weight bytes per token at the
copy bandwidth (`--copy-gbps`, measured when on CUDA). Timing: medians of CUDA events after
warm-up (host timer on CPU); outputs and tokens checked against eager.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import functools
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import kernel_fx
from kernel_fx.integrations import prepare, transformers_mapping

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import timed  # noqa: E402 - one timing method for every benchmark

VARIANTS = ("eager", "eager+kernelize", "inductor", "hubkernels", "hubkernels+autotune")


def build(name: str, device: str, dtype: torch.dtype, quick: bool) -> nn.Module:
    import transformers

    big = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=8,
               vocab_size=32000, max_position_embeddings=4096)
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=128, max_position_embeddings=256)
    sizes = small if quick else big
    configs = {
        "llama": lambda: transformers.LlamaConfig(**sizes),
        "qwen3": lambda: transformers.Qwen3Config(**sizes, head_dim=sizes["hidden_size"] // sizes["num_attention_heads"]),
        "mixtral": lambda: transformers.MixtralConfig(**sizes, num_local_experts=8, num_experts_per_tok=2),
    }
    models = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM", "mixtral": "MixtralForCausalLM"}
    torch.manual_seed(0)
    config = configs[name]()
    config._attn_implementation = "sdpa"
    return getattr(transformers, models[name])(config).to(device=device, dtype=dtype).eval()


def variant_model(variant: str, base: nn.Module, training: bool, compile_mode: str | None = None) -> tuple[Any, Any]:
    """(callable model, hubkernels backend or None) for one variant."""
    model = copy.deepcopy(base).train(training)
    if variant == "eager":
        return model, None
    prepare(model)
    if variant == "eager+kernelize":
        kernel_fx.kernelize(model)
        return model, None
    if variant == "inductor":
        model.forward = torch.compile(model.forward, mode=compile_mode)
        return model, None
    backend = kernel_fx.HubKernelsBackend(autotune=variant.endswith("autotune"))
    model.forward = torch.compile(model.forward, backend=backend, mode=compile_mode)
    return model, backend


def forward_flops(model: nn.Module, batch: int, seq: int, training: bool) -> float:
    """2 * params * tokens for the matmuls plus the attention scores (causal: half), x3 with backward."""
    params = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
    c = model.config
    attention = 2 * 2 * batch * seq * seq * c.hidden_size * c.num_hidden_layers / 2
    total = 2 * params * batch * seq + attention
    return total * (3 if training else 1)


def run_call(call: str, name: str, base: nn.Module, device: str, args: argparse.Namespace) -> list[dict]:
    rows = []
    quick_shape = (2, 32) if args.quick else (4, 2048)
    batch, seq = quick_shape
    ids = torch.randint(0, base.config.vocab_size, (batch, seq), device=device)
    for variant in args.variants.split(","):
        torch._dynamo.reset()
        row: dict[str, Any] = {"model": name, "call": call, "variant": variant}
        try:
            if call in ("forward", "train"):
                row.update(_forward_or_train(call, variant, base, ids, device, args))
            else:
                row.update(_decode(call, variant, base, device, args))
        except Exception as exc:  # a failing variant is a result too
            row["error"] = f"{type(exc).__name__}: {exc}"[:400]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _forward_or_train(call: str, variant: str, base: nn.Module, ids: torch.Tensor, device: str, args: argparse.Namespace) -> dict:
    training = call == "train"
    model, backend = variant_model(variant, base, training)
    with torch.no_grad():
        reference = copy.deepcopy(base)(ids).logits.float()

    def step() -> torch.Tensor:
        if training:
            out = model(ids, labels=ids)
            out.loss.backward()
            return out.logits
        with torch.no_grad():
            return model(ids).logits  # the default call: with a KV cache

    t0 = time.perf_counter()
    first = step()
    first_s = time.perf_counter() - t0
    error = ((first.detach().float() - reference).norm() / reference.norm()).item()
    median, peak = timed(step, device, args.warmup, args.repeats)
    flops = forward_flops(base, *ids.shape, training)
    return {"median_ms": median, "peak_mib": peak, "rel_error_vs_eager": error if not training else None, "first_call_s": first_s,
            "share_of_peak": flops / (median * 1e-3) / (args.peak_tflops * 1e12),
            "report": backend.report.summary() if backend is not None else None}


def _decode(call: str, variant: str, base: nn.Module, device: str, args: argparse.Namespace) -> dict:
    results = {}
    mode = "reduce-overhead" if call == "decode-graphs" else None
    model, backend = variant_model(variant, base, False, compile_mode=mode)
    weight_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    for batch in (1, 16):
        prompt = torch.randint(0, base.config.vocab_size, (batch, 16 if args.quick else 128), device=device)
        new = 8 if args.quick else 128
        kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, cache_implementation="static")
        expected = copy.deepcopy(base).generate(prompt, **kwargs)
        tokens = model.generate(prompt, **kwargs)  # warm-up and compile
        same = bool(torch.equal(tokens, expected))
        median, _ = timed(functools.partial(model.generate, prompt, **kwargs), device, 1, max(3, args.repeats // 4))
        per_token_s = median * 1e-3 / new
        results[f"batch{batch}_tokens_per_s"] = batch / per_token_s
        results[f"batch{batch}_tokens_equal_eager"] = same
        results[f"batch{batch}_share_of_copy_bandwidth"] = weight_bytes / per_token_s / (args.copy_gbps * 1e9)
    results["report"] = backend.report.summary() if backend is not None else None
    return results


def copy_bandwidth_gbps() -> float:
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    median, _ = timed(lambda: dst.copy_(src), "cuda", 3, 10)
    return 2 * 2**30 / (median * 1e-3) / 1e9


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("llama", "qwen3", "mixtral"), default="llama")
    parser.add_argument("--calls", default="forward,train,decode,decode-graphs")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="a tiny model, for smoke runs (CPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--copy-gbps", type=float, default=None, help="default: measured on CUDA, 3000 elsewhere")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.copy_gbps is None:
        args.copy_gbps = copy_bandwidth_gbps() if device == "cuda" else 3000.0
    base = build(args.model, device, dtype, args.quick)
    kernel_fx.register_kernel_mapping(transformers_mapping())  # read when kernelizing and when compiling
    rows = [row for call in args.calls.split(",") for row in run_call(call, args.model, base, device, args)]
    meta = {"model": args.model, "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "python": platform.python_version(), "copy_gbps": args.copy_gbps,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "PYTHONPATH=. python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])])}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"transformers-{args.model}{'-quick' if args.quick else ''}-{device}"
        (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
