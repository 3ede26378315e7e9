"""transformers models as users call them: forward with a KV cache, a training step, and decode.

    PYTHONPATH=. python benchmarks/bench_transformers.py --model llama --out benchmarks/results
    PYTHONPATH=. python benchmarks/bench_transformers.py --model llama --variants liger,liger+inductor --out ...
    PYTHONPATH=. python benchmarks/bench_transformers.py --model qwen3 --calls decode --quick   # CPU smoke run

Models: random-weight Llama, Qwen3 and Mixtral, h2048-class configs, bf16 on CUDA (float32 and tiny
on CPU). Calls: `forward` (`model(ids)` with its cache, b4 x s2048), `train` (a step with a
cross-entropy loss on labels, forward + backward), `decode` (`generate` with a static cache,
tokens/s at batch 1, 16 and 64, as users run it: transformers compiles the decode step itself
unless told not to — DESIGN.md §5).

Variants of forward and train: eager, eager+kernelize (kernel_fx's transformers integration),
inductor (stock: no kernel_fx), hubkernels, hubkernels+autotune, liger (Liger's kernels patched
in), liger+inductor. Variants of decode: eager (`disable_compile=True`), eager+kernelize,
transformers-compile (its own inductor + CUDA graphs), kernelize+transformers-compile,
hubkernels (`compile_config=CompileConfig(backend="hubkernels", mode="default")`), hubkernels+graphs
(the same with `mode="reduce-overhead"`), liger+transformers-compile. Liger patches transformers'
classes for the whole process: run its variants in a process of their own (`--variants liger,...`).

Each row carries its share of the physical limit: forward and train FLOPs at the device's bf16 peak
(`--peak-tflops`, H100 SXM dense: 989), decode weight bytes per token at the copy bandwidth
(`--copy-gbps`, measured when on CUDA), and for decode the graphs dynamo compiled while warming
up and after (recompiles: 0 when nothing recompiles per token). Timing: medians of CUDA events
after warm-up (host timer on CPU); outputs and tokens checked against eager. Rows are appended to
`<out>/<stem>.jsonl` as each finishes, so a run cut short keeps what it measured.
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
DECODE_VARIANTS = ("eager", "eager+kernelize", "transformers-compile", "kernelize+transformers-compile", "hubkernels",
                   "hubkernels+graphs")
LIGER_VARIANTS = ("liger", "liger+inductor", "liger+transformers-compile")


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
    """(callable model, hubkernels backend or None) for one forward/train variant."""
    model = copy.deepcopy(base).train(training)
    if variant in ("eager", "inductor", "liger", "liger+inductor"):
        if variant.startswith("liger"):
            apply_liger(model)
        if variant.endswith("inductor"):  # stock: no kernel_fx at all
            model.forward = torch.compile(model.forward, mode=compile_mode)
        return model, None
    prepare(model)
    if variant == "eager+kernelize":
        kernel_fx.kernelize(model)
        return model, None
    backend = kernel_fx.HubKernelsBackend(autotune=variant.endswith("autotune"))
    model.forward = torch.compile(model.forward, backend=backend, mode=compile_mode)
    return model, backend


def apply_liger(model: nn.Module) -> None:
    """Liger's kernels for this model type (RMSNorm, SwiGLU, rotary, fused linear cross entropy)."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model)


def forward_flops(model: nn.Module, batch: int, seq: int, training: bool) -> float:
    """2 * params * tokens for the matmuls plus the attention scores (causal: half), x3 with backward."""
    params = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
    c = model.config
    attention = 2 * 2 * batch * seq * seq * c.hidden_size * c.num_hidden_layers / 2
    total = 2 * params * batch * seq + attention
    return total * (3 if training else 1)


def run_call(call: str, name: str, base: nn.Module, device: str, args: argparse.Namespace) -> list[dict]:
    rows = []
    batch, seq = (2, 32) if args.quick else (4, 2048)
    ids = torch.randint(0, base.config.vocab_size, (batch, seq), device=device)
    variants = args.variants.split(",") if args.variants else (DECODE_VARIANTS if call == "decode" else VARIANTS)
    for variant in variants:  # a variant of the other kind of call is skipped (e.g. liger+inductor for decode)
        if call == "decode" and variant in DECODE_VARIANTS + LIGER_VARIANTS[2:]:
            rows += [_row(args, name, call, variant, _decode, variant, base, device, batch, args)
                     for batch in args.decode_batches]
        elif call in ("forward", "train") and variant in VARIANTS + LIGER_VARIANTS[:2]:
            rows.append(_row(args, name, call, variant, _forward_or_train, call, variant, base, ids, device, args))
    return rows


def _row(args: argparse.Namespace, name: str, call: str, variant: str, measure: Any, *measure_args: Any) -> dict:
    """One measured row (or its error), printed and appended to the run's JSONL as soon as it exists."""
    torch._dynamo.reset()
    row: dict[str, Any] = {"model": name, "call": call, "variant": variant}
    try:
        row.update(measure(*measure_args))
    except Exception as exc:  # a failing variant is a result too
        row["error"] = f"{type(exc).__name__}: {exc}"[:400]
    line = json.dumps(row)
    print(line, flush=True)
    if args.jsonl is not None:
        with args.jsonl.open("a") as f:
            f.write(line + "\n")
    return row


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


def decode_model(variant: str, base: nn.Module, device: str) -> tuple[nn.Module, dict, Any]:
    """(model, generate kwargs, whether hubkernels compiles it) for one decode variant, as users run it."""
    from transformers import CompileConfig

    model = copy.deepcopy(base)
    if variant.startswith("liger"):
        apply_liger(model)
    elif variant not in ("eager", "transformers-compile"):
        prepare(model)
        if "kernelize" in variant:
            kernel_fx.kernelize(model)
    if variant in ("eager", "eager+kernelize"):
        return model, {"disable_compile": True}, None
    if variant.startswith("hubkernels"):
        config = CompileConfig(backend="hubkernels", mode="reduce-overhead" if variant.endswith("graphs") else "default")
    else:  # transformers' own: its default CompileConfig (inductor, reduce-overhead) on CUDA
        config = CompileConfig()
    config._compile_all_devices = device != "cuda"  # CPU smoke runs: transformers compiles on CUDA only
    return model, {"compile_config": config}, variant.startswith("hubkernels")


def _decode(variant: str, base: nn.Module, device: str, batch: int, args: argparse.Namespace) -> dict:
    from torch._dynamo.utils import counters

    model, extra, hub = decode_model(variant, base, device)
    weight_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    prompt = torch.randint(0, base.config.vocab_size, (batch, 16 if args.quick else 128), device=device)
    new = 8 if args.quick else 128
    kwargs = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                  cache_implementation="static")
    expected = copy.deepcopy(base).generate(prompt, disable_compile=True, **kwargs)
    graphs = counters["stats"]["unique_graphs"]
    tokens = model.generate(prompt, **kwargs, **extra)  # warm-up and compile
    warm_graphs = counters["stats"]["unique_graphs"]
    median, _ = timed(functools.partial(model.generate, prompt, **kwargs, **extra), device, 1, max(3, args.repeats // 4))
    per_token_s = median * 1e-3 / new
    report = kernel_fx.last_compile_report() if hub else None
    return {"batch": batch, "tokens_per_s": batch / per_token_s, "tokens_equal_eager": bool(torch.equal(tokens, expected)),
            "share_of_bound": weight_bytes / per_token_s / (args.copy_gbps * 1e9), "graphs_compiled": warm_graphs - graphs,
            "recompiles": counters["stats"]["unique_graphs"] - warm_graphs, "report": report.summary() if report else None}


def copy_bandwidth_gbps() -> float:
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    median, _ = timed(lambda: dst.copy_(src), "cuda", 3, 10)
    return 2 * 2**30 / (median * 1e-3) / 1e9


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("llama", "qwen3", "mixtral"), default="llama")
    parser.add_argument("--calls", default="forward,train,decode")
    parser.add_argument("--variants", default=None, help="default: every variant of each call but Liger's")
    parser.add_argument("--decode-batches", type=lambda v: [int(b) for b in v.split(",")], default=[1, 16, 64])
    parser.add_argument("--quick", action="store_true", help="a tiny model, for smoke runs (CPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--copy-gbps", type=float, default=None, help="default: measured on CUDA, 3000 elsewhere")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--tag", default="", help="appended to the output files' names (e.g. -liger)")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.copy_gbps is None:
        args.copy_gbps = copy_bandwidth_gbps() if device == "cuda" else 3000.0
    base = build(args.model, device, dtype, args.quick)
    kernel_fx.register_kernel_mapping(transformers_mapping())  # read when kernelizing and when compiling
    stem = f"transformers-{args.model}{'-quick' if args.quick else ''}-{device}{args.tag}"
    args.jsonl = None
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        args.jsonl = args.out / f"{stem}.jsonl"
    rows = [row for call in args.calls.split(",") for row in run_call(call, args.model, base, device, args)]
    meta = {"model": args.model, "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "transformers": _version("transformers"), "kernels": _version("kernels"),
            "liger_kernel": _version("liger_kernel"), "python": platform.python_version(), "copy_gbps": args.copy_gbps,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "PYTHONPATH=. python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])])}
    if args.out:
        (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(json.dumps(meta))


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package.replace("_", "-"))
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
