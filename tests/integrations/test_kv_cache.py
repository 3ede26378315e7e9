"""Attention called with a transformers KV cache, compiled with hubkernels: the attention kernel
goes in while dynamo traces the call (the cache is no graph value), on the calls users make —
`model(ids)`, `model(ids, attention_mask=...)`, `generate`, a training step — with eager's numbers
and tokens, and reports that list the same sites as eager `kernelize`."""

from __future__ import annotations

import copy
import importlib
import inspect
import sys

import pytest
import torch
from kernel_repos import make_kernel_repo

import kernel_fx
from kernel_fx import HubKernelsBackend, LocalLayerRepository, Outcome, Reason

transformers = pytest.importorskip("transformers")

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=128, max_position_embeddings=64)
FAMILIES = {  # name: (model class, config, attention class)
    "llama": ("LlamaForCausalLM", lambda: transformers.LlamaConfig(**COMMON), "llama.modeling_llama.LlamaAttention"),
    "qwen3": ("Qwen3ForCausalLM", lambda: transformers.Qwen3Config(**COMMON, head_dim=16), "qwen3.modeling_qwen3.Qwen3Attention"),
    "mixtral": ("MixtralForCausalLM", lambda: transformers.MixtralConfig(**COMMON, num_local_experts=2, num_experts_per_tok=1),
                "mixtral.modeling_mixtral.MixtralAttention"),
    "gemma2": ("Gemma2ForCausalLM", lambda: transformers.Gemma2Config(**COMMON, head_dim=16), "gemma2.modeling_gemma2.Gemma2Attention"),
}

# An attention kernel that counts its calls and computes exactly what the family's own forward does.
ATTENTION_KERNEL = '''
import importlib
import inspect

from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

CALLS = [0]
_original = inspect.unwrap(getattr(importlib.import_module("{module}"), "{cls}").forward)


class CountingAttention(nn.Module):
    can_torch_compile = True

    def forward({params}):
        if not isinstance({first}, FakeTensor):  # calls, not the trace-time check's run on fake values (issue 19)
            CALLS[0] += 1
        return _original({call})
'''


def attention_kernel(path: str) -> str:
    module, cls = f"transformers.models.{path}".rsplit(".", 1)
    signature = inspect.signature(inspect.unwrap(getattr(importlib.import_module(module), cls).forward))
    params, call = [], []
    for p in signature.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            params.append(f"**{p.name}")
            call.append(f"**{p.name}")
        else:
            params.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
            call.append(p.name)
    return ATTENTION_KERNEL.format(module=module, cls=cls, params=", ".join(params), call=", ".join(call), first=call[1])


@pytest.fixture(params=list(FAMILIES))
def family(request, tmp_path):
    return tiny_family(request.param, tmp_path)


def tiny_family(name: str, tmp_path):
    """A tiny model of the family with its attention class marked as "Attention", the mapping to
    the counting kernel, and the kernel's call counter."""
    model_class, config, attention = FAMILIES[name]
    module, cls = f"transformers.models.{attention}".rsplit(".", 1)
    kernel_fx.replace_kernel_forward_from_hub(getattr(importlib.import_module(module), cls), "Attention")
    root = make_kernel_repo(tmp_path / "attention", {"torch-cpu": {"layers.py": attention_kernel(attention)}})
    repo = LocalLayerRepository(root, layer_name="CountingAttention")
    calls = sys.modules[repo.load(backend="cpu").__module__].CALLS
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(config()).eval()
    return model, {"Attention": {"cpu": repo}}, calls


def ids_and_mask() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    return ids, mask


@pytest.mark.parametrize("inner", ["eager", "aot_eager"])
def test_attention_kernel_runs_with_a_cache_and_matches(family, inner):
    model, mapping, calls = family
    ids, mask = ids_and_mask()
    with torch.no_grad():
        expected = model(ids).logits
        expected_masked = model(ids, attention_mask=mask).logits
    with kernel_fx.use_kernel_mapping(mapping):
        eager_sites = {(d.path, d.layer_name) for d in kernel_fx.report(kernel_fx.kernelize(copy.deepcopy(model), device="cpu")).decisions}
        backend = HubKernelsBackend(inner=inner)
        compiled = torch.compile(copy.deepcopy(model), backend=backend)
        calls[0] = 0
        with torch.no_grad():
            torch.testing.assert_close(compiled(ids).logits, expected)
            torch.testing.assert_close(compiled(ids, attention_mask=mask).logits, expected_masked)
    assert calls[0] >= 2 * 2  # two layers, two calls: the kernel ran (not only traced)
    attention = [d for d in backend.report.decisions if d.layer_name == "Attention"]
    assert attention and all(d.outcome is Outcome.KERNEL for d in attention)
    assert {(d.path, d.layer_name) for d in backend.report.decisions} == eager_sites
    assert all(d.uses_kernel or d.rejected.reason in (Reason.NO_MAPPING, Reason.ENCLOSED) for d in backend.report.decisions)
    assert any(diff.how.value == "at trace time" for record in backend.records for diff in record.site_diffs)


def test_generate_with_a_compiled_forward_gives_eager_tokens(family):
    model, mapping, calls = family
    ids, mask = ids_and_mask()
    expected = copy.deepcopy(model).generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    generating = copy.deepcopy(model)
    backend = HubKernelsBackend(inner="eager")
    generating.forward = torch.compile(generating.forward, backend=backend)
    calls[0] = 0
    with kernel_fx.use_kernel_mapping(mapping):
        tokens = generating.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    assert torch.equal(tokens, expected)
    assert calls[0] == 2 * 4  # two layers, four forward calls (prefill and three decode steps)
    assert all(d.outcome is Outcome.KERNEL for d in backend.report.decisions if d.layer_name == "Attention")


def test_training_step_with_the_cache_on(family):
    model, mapping, calls = family
    ids, _mask = ids_and_mask()
    reference = copy.deepcopy(model).train()
    loss = reference(ids, labels=ids, use_cache=True).loss
    loss.backward()
    trained = copy.deepcopy(model).train()
    backend = HubKernelsBackend(inner="aot_eager")
    with kernel_fx.use_kernel_mapping(mapping):
        got = torch.compile(trained, backend=backend)(ids, labels=ids, use_cache=True).loss
    got.backward()
    torch.testing.assert_close(got, loss)
    for p, q in zip(trained.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    assert all(d.outcome is Outcome.KERNEL and d.mode.startswith("TRAINING") for d in backend.report.decisions if d.layer_name == "Attention")


def test_inductor_with_a_cache(tmp_path):
    """The default call, compiled by inductor behind hubkernels: the traced-in kernel survives."""
    model, mapping, calls = tiny_family("llama", tmp_path)
    ids, mask = ids_and_mask()
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
    backend = HubKernelsBackend(inner="inductor")
    calls[0] = 0
    with kernel_fx.use_kernel_mapping(mapping), torch.no_grad():
        got = torch.compile(copy.deepcopy(model), backend=backend)(ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert calls[0] == 2
    assert all(d.outcome is Outcome.KERNEL for d in backend.report.decisions if d.layer_name == "Attention")
