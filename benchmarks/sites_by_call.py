"""Sites substituted and reported on tiny transformers models, per call users make (CPU, no network).

    PYTHONPATH=. python benchmarks/sites_by_call.py [--families llama,qwen3,mixtral,gemma2]

Each family's attention class is marked "Attention" and mapped to a kernel that calls the family's
own attention forward; "RMSNorm" and "rotary_pos_emb" (marked by transformers) map to plain-torch
kernels. Prints, per family and call, what eager `kernelize` reports and what hubkernels (inner
"eager") reports: `kernel / sites` and the originals by reason. Uses only the public API, so the
same script runs on older checkouts for before/after figures.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from kernel_repos import make_kernel_repo  # noqa: E402

import kernel_fx  # noqa: E402
from kernel_fx import HubKernelsBackend, LocalLayerRepository  # noqa: E402

KERNELS = '''
import importlib
import inspect

import torch
from torch import nn

_original = inspect.unwrap(getattr(importlib.import_module("{module}"), "{cls}").forward)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryPosEmb(nn.Module):
    can_torch_compile = True

    def forward(self, q, k, cos, sin, unsqueeze_dim=1):
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


class RMSNorm(nn.Module):
    can_torch_compile = True

    def forward(self, hidden_states):
        x = hidden_states.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(hidden_states.dtype)


class Attention(nn.Module):
    can_torch_compile = True

    def forward({params}):
        return _original({call})
'''

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=128, max_position_embeddings=64)


def families() -> dict:
    import transformers

    return {
        "llama": (lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**COMMON)), "llama.modeling_llama.LlamaAttention"),
        "qwen3": (lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**COMMON, head_dim=16)), "qwen3.modeling_qwen3.Qwen3Attention"),
        "mixtral": (lambda: transformers.MixtralForCausalLM(transformers.MixtralConfig(**COMMON, num_local_experts=2, num_experts_per_tok=1)),
                    "mixtral.modeling_mixtral.MixtralAttention"),
        "gemma2": (lambda: transformers.Gemma2ForCausalLM(transformers.Gemma2Config(**COMMON, head_dim=16)), "gemma2.modeling_gemma2.Gemma2Attention"),
    }


def kernel_source(attention: str) -> str:
    module, cls = f"transformers.models.{attention}".rsplit(".", 1)
    signature = inspect.signature(inspect.unwrap(getattr(importlib.import_module(module), cls).forward))
    params, call = [], []
    for p in signature.parameters.values():
        star = "**" if p.kind is p.VAR_KEYWORD else ""
        params.append(star + p.name if star or p.default is p.empty else f"{p.name}={p.default!r}")
        call.append(star + p.name)
    return KERNELS.format(module=module, cls=cls, params=", ".join(params), call=", ".join(call))


def describe(decisions: list) -> str:
    sites = {(d.path, d.call_index): d for d in decisions}
    kernel = sum(d.uses_kernel for d in sites.values())
    reasons = Counter(d.rejected.reason.value for d in sites.values() if not d.uses_kernel and d.rejected is not None)
    tail = ", ".join(f"{r}: {c}" for r, c in sorted(reasons.items()))
    return f"{kernel} / {len(sites)}" + (f" ({tail})" if tail else "")


def run_family(name: str, make, attention: str, root: Path) -> list[tuple[str, str, str, str]]:
    module, cls = f"transformers.models.{attention}".rsplit(".", 1)
    kernel_fx.replace_kernel_forward_from_hub(getattr(importlib.import_module(module), cls), "Attention")
    repo = make_kernel_repo(root / name, {"torch-cpu": {"layers.py": kernel_source(attention)}})
    mapping = {layer: {"cpu": LocalLayerRepository(repo, layer_name=kernel)}
               for layer, kernel in (("Attention", "Attention"), ("RMSNorm", "RMSNorm"), ("rotary_pos_emb", "RotaryPosEmb"))}
    torch.manual_seed(0)
    model = make().eval()
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    rows = []
    with kernel_fx.use_kernel_mapping(mapping):
        eager = describe(kernel_fx.report(kernel_fx.kernelize(copy.deepcopy(model), device="cpu")).decisions)
        calls = {
            "model(ids)": lambda m: m(ids),
            "model(ids, attention_mask)": lambda m: m(ids, attention_mask=mask),
            "generate(max_new_tokens=4)": None,
            "training step": lambda m: m.train()(ids, labels=ids).loss.backward(),
        }
        for call, fn in calls.items():
            torch._dynamo.reset()
            backend = HubKernelsBackend(inner="eager")
            try:
                if fn is None:
                    generating = copy.deepcopy(model)
                    generating.forward = torch.compile(generating.forward, backend=backend)
                    generating.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
                else:
                    with torch.set_grad_enabled(call == "training step"):
                        fn(torch.compile(copy.deepcopy(model), backend=backend))
                compiled = describe(backend.report.decisions)
            except Exception as exc:  # noqa: BLE001 - a figure, not a test: say what failed
                compiled = f"failed: {type(exc).__name__}"
            rows.append((name, call, eager, compiled))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="llama,qwen3,mixtral,gemma2")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    known = families()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.families.split(","):
            make, attention = known[name]
            rows += run_family(name, make, attention, Path(tmp))
    print("| family | call | eager kernelize: kernel / sites | hubkernels: kernel / sites |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
