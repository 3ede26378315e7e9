"""Eager-path costs on this CPU: per-call overhead of a kernelized layer, and kernelize time.

    python benchmarks/bench_eager.py

Per-call overhead is `module(x)` after kernelize minus `module(x)` with the kernel's forward
bound directly on the instance (the Hugging Face anchor's way, which cannot follow
train()/eval()). Then a small transformers Llama's eager forward on one token, plain and
kernelized with kernels that run the layers' own code (so the difference is kernel_fx's cost a
user sees per token when decoding eagerly). Medians of many repeats; figures in microseconds and
milliseconds; each line prints its target.
"""

from __future__ import annotations

import platform
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import MethodType

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kernel_fx  # noqa: E402
from kernel_fx import LocalLayerRepository, Mode, kernelize, use_kernel_mapping  # noqa: E402


@kernel_fx.use_kernel_forward_from_hub("Identity")
class Identity(nn.Module):
    def forward(self, x):
        return x


LAYERS = """
from torch import nn

class Identity(nn.Module):
    has_backward = {has_backward}
    can_torch_compile = True

    def forward(self, x):
        return x
"""


def make_repo(root: Path, has_backward: bool) -> LocalLayerRepository:
    variant = root / "build" / "torch-cpu"
    variant.mkdir(parents=True)
    (variant / "__init__.py").write_text("from . import layers\n")
    (variant / "layers.py").write_text(textwrap.dedent(LAYERS.format(has_backward=has_backward)))
    (variant / "metadata.json").write_text(f'{{"id": "bench_identity_{int(has_backward)}"}}')
    return LocalLayerRepository(root, layer_name="Identity")


def per_call_ns(module: nn.Module, x: torch.Tensor, calls: int = 20000, repeats: int = 15) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(calls):
            module(x)
        samples.append((time.perf_counter_ns() - start) / calls)
    return statistics.median(samples)


def overhead(repo: LocalLayerRepository, mode: Mode | None) -> tuple[float, float]:
    kernel_cls = repo.load(backend="cpu")
    direct = Identity()
    direct.forward = MethodType(kernel_cls.forward, direct)  # the anchor's binding: zero overhead
    ours = Identity()
    with use_kernel_mapping({"Identity": {"cpu": repo}}):
        kernelize(ours, mode=mode, device="cpu")
    x = torch.ones(1)
    with torch.no_grad():
        base, mine = per_call_ns(direct, x), per_call_ns(ours, x)
    return base, mine


def kernelize_ms(repo: LocalLayerRepository, layers: int = 5000) -> tuple[float, float]:
    model = nn.ModuleList(Identity() for _ in range(layers))
    model.register_buffer("anchor", torch.zeros(1))
    with use_kernel_mapping({"Identity": {"cpu": repo}}):
        start = time.perf_counter()
        kernelize(model, mode=Mode.INFERENCE)
        first = time.perf_counter() - start
        repeats = []
        for _ in range(5):
            start = time.perf_counter()
            kernelize(model, mode=Mode.INFERENCE)
            repeats.append(time.perf_counter() - start)
    return first * 1e3, statistics.median(repeats) * 1e3


# Kernels that are the layers' own code: kernelized minus plain is then kernel_fx's overhead alone.
SAME_CODE = """
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm


class RMSNorm(nn.Module):
    can_torch_compile = True
    forward = getattr(LlamaRMSNorm.forward, "__wrapped__", LlamaRMSNorm.forward)  # not kernel_fx's call-boundary wrapper
"""


def transformers_decode(root: Path, layers: int = 2, calls: int = 300, repeats: int = 15) -> tuple[float, float, int]:
    """A small transformers Llama's eager forward on one token (a decode step, no cache), plain and
    kernelized with kernels that run the layers' own code: medians in microseconds, and the number
    of sites that run a kernel."""
    import copy

    import transformers

    variant = root / "build" / "torch-cpu"
    variant.mkdir(parents=True)
    (variant / "__init__.py").write_text("from . import layers\n")
    (variant / "layers.py").write_text(SAME_CODE)
    (variant / "metadata.json").write_text('{"id": "bench_same_code"}')
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=128)
    torch.manual_seed(0)
    plain = transformers.LlamaForCausalLM(config).eval()
    ours = copy.deepcopy(plain)
    with use_kernel_mapping({"RMSNorm": {"cpu": LocalLayerRepository(root, layer_name="RMSNorm")}}):
        kernelize(ours, device="cpu", mode=Mode.INFERENCE)
    sites = sum(d.uses_kernel for d in kernel_fx.report(ours).decisions)
    ids = torch.tensor([[1]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, use_cache=False).logits, plain(ids, use_cache=False).logits)
        samples: dict[str, list[float]] = {"plain": [], "ours": []}
        for _ in range(repeats):  # alternating, so drift hits both
            for label, model in (("plain", plain), ("ours", ours)):
                start = time.perf_counter_ns()
                for _ in range(calls):
                    model(ids, use_cache=False)
                samples[label].append((time.perf_counter_ns() - start) / calls / 1e3)
    return statistics.median(samples["plain"]), statistics.median(samples["ours"]), sites


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with_backward = make_repo(Path(tmp) / "a", True)
        without_backward = make_repo(Path(tmp) / "b", False)
        print(f"# kernel_fx eager benchmark: torch {torch.__version__}, Python {platform.python_version()}, {platform.processor() or platform.machine()}")
        for label, repo, mode in [
            ("static mode (Mode.INFERENCE)", with_backward, Mode.INFERENCE),
            ("mode=None, kernel with backward", with_backward, None),
            ("mode=None, has_backward=False (checks per call)", without_backward, None),
        ]:
            base, mine = overhead(repo, mode)
            print(f"per-call: {label}: bound kernel {base / 1e3:.2f} us, kernelized {mine / 1e3:.2f} us, "
                  f"overhead {(mine - base) / 1e3:+.2f} us (target <= 0.5)")
        first, repeat = kernelize_ms(with_backward)
        print(f"kernelize 5,000 layers: first {first:.1f} ms (target <= 35), repeat {repeat:.1f} ms (target <= 10)")
        plain, ours, sites = transformers_decode(Path(tmp) / "same_code")
        print(f"transformers Llama (2 layers, h64) eager forward per token: plain {plain:.1f} us, kernelized {ours:.1f} us "
              f"({sites} RMSNorm sites running kernels of the same code), overhead {ours - plain:+.1f} us "
              f"= {(ours - plain) / sites:+.2f} us per site (target <= 0.5 per site)")


if __name__ == "__main__":
    main()
