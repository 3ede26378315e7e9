"""Layers and functions transformers marks through the `kernels` package (RMSNorm classes, the
`rotary_pos_emb` function of `use_kernelized_func`) get kernels with nothing but `kernelize(model)`
or `torch.compile(model, backend="hubkernels")`: the same sites on both paths, kernels that run,
and the numbers of eager — whatever else the installed transformers marks."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from kernel_repos import make_kernel_repo

import kernel_fx
from kernel_fx import HubKernelsBackend, LocalLayerRepository, Reason

transformers = pytest.importorskip("transformers")

KERNELS = '''
import torch
from torch import nn

CALLS = {"rotary": 0, "norm": 0}


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryPosEmb(nn.Module):
    can_torch_compile = True

    def forward(self, q, k, cos, sin, unsqueeze_dim=1):
        CALLS["rotary"] += 1
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


class RMSNorm(nn.Module):
    can_torch_compile = True

    def forward(self, hidden_states):
        CALLS["norm"] += 1
        x = hidden_states.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(hidden_states.dtype)
'''

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=128, max_position_embeddings=64)
FAMILIES = {
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**COMMON)),
    "qwen3": lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**COMMON, head_dim=16)),
    "mixtral": lambda: transformers.MixtralForCausalLM(transformers.MixtralConfig(**COMMON, num_local_experts=2, num_experts_per_tok=1)),
    "gemma2": lambda: transformers.Gemma2ForCausalLM(transformers.Gemma2Config(**COMMON, head_dim=16)),  # its own (1 + w) norm: unmarked
}


@pytest.fixture
def mapping(tmp_path):
    root = make_kernel_repo(tmp_path / "marks", {"torch-cpu": {"layers.py": KERNELS}})
    repo = {name: LocalLayerRepository(root, layer_name=name) for name in ("RotaryPosEmb", "RMSNorm")}
    calls = sys.modules[repo["RMSNorm"].load(backend="cpu").__module__].CALLS
    return {"rotary_pos_emb": {"cpu": repo["RotaryPosEmb"]}, "RMSNorm": {"cpu": repo["RMSNorm"]}}, calls


def sites(decisions):
    return {(d.path, d.layer_name) for d in decisions}


def check_promise(decisions, mapped):
    for d in decisions:
        if d.layer_name in mapped:
            assert d.uses_kernel and d.rejected is None, d
        else:
            assert d.rejected is not None and d.rejected.reason in {Reason.NO_MAPPING, Reason.ENCLOSED}, d


@pytest.mark.parametrize("family", list(FAMILIES))
def test_marked_layers_and_functions_get_kernels_eagerly_and_compiled(family, mapping):
    table, calls = mapping
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids).logits  # the default call: with a KV cache
    with kernel_fx.use_kernel_mapping(table):
        eager = kernel_fx.kernelize(copy.deepcopy(model), device="cpu")
        calls.update(rotary=0, norm=0)
        with torch.no_grad():
            torch.testing.assert_close(eager(ids).logits, expected)
        eager_decisions = kernel_fx.report(eager).decisions
        per_layer = {name: sum(d.layer_name == name for d in eager_decisions) for name in table}
        assert calls == {"rotary": per_layer["rotary_pos_emb"], "norm": per_layer["RMSNorm"]} and per_layer["rotary_pos_emb"] == 2
        check_promise(eager_decisions, table)
        assert any(d.layer_name == "rotary_pos_emb" and d.path == "model.layers.1.self_attn.rotary_pos_emb" for d in eager_decisions)

        for inner in ("eager", "aot_eager"):
            torch._dynamo.reset()
            calls.update(rotary=0, norm=0)
            backend = HubKernelsBackend(inner=inner)
            with torch.no_grad():
                torch.testing.assert_close(torch.compile(copy.deepcopy(model), backend=backend)(ids).logits, expected)
            assert calls["rotary"] >= 1 and calls["norm"] >= min(1, per_layer["RMSNorm"])  # traced into the graph
            check_promise(backend.report.decisions, table)
            assert sites(backend.report.decisions) == sites(eager_decisions), inner


def test_rotary_kernel_in_training_and_generate(mapping):
    table, calls = mapping
    torch.manual_seed(0)
    model = FAMILIES["llama"]()
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(1))
    reference = copy.deepcopy(model).train()
    loss = reference(ids, labels=ids).loss
    loss.backward()
    with kernel_fx.use_kernel_mapping(table):
        compiled = copy.deepcopy(model).train()
        backend = HubKernelsBackend(inner="aot_eager")
        got = torch.compile(compiled, backend=backend)(ids, labels=ids).loss
        got.backward()
        torch.testing.assert_close(got, loss)
        for p, q in zip(compiled.parameters(), reference.parameters()):
            torch.testing.assert_close(p.grad, q.grad)
        assert [d for d in backend.report.decisions if d.layer_name == "rotary_pos_emb" and d.uses_kernel]

        torch._dynamo.reset()
        generating = copy.deepcopy(model).eval()
        backend = HubKernelsBackend(inner="eager")
        generating.forward = torch.compile(generating.forward, backend=backend)
        mask = torch.ones_like(ids)
        tokens = generating.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    expected = copy.deepcopy(model).eval().generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    assert torch.equal(tokens, expected)
    assert all(d.uses_kernel for d in backend.report.decisions if d.layer_name in table)


def test_eval_reaches_the_per_instance_function_modules(mapping):
    """`model.eval()` never reaches `kernels`' hidden function modules: kernelize reads the host's flag."""
    table, _calls = mapping
    model = FAMILIES["llama"]().eval()
    with kernel_fx.use_kernel_mapping(table):
        kernel_fx.kernelize(model, device="cpu")
    attn = model.model.layers[0].self_attn
    (function,) = vars(attn)["_kernel_funcs"].values()
    assert function.training and vars(function)["forward"].owner is attn


def test_inductor_keeps_the_numbers_with_marked_layers_and_functions(mapping):
    table, calls = mapping
    torch.manual_seed(0)
    model = FAMILIES["llama"]().eval()
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(ids).logits
    backend = HubKernelsBackend(inner="inductor")
    with kernel_fx.use_kernel_mapping(table), torch.no_grad():
        got = torch.compile(copy.deepcopy(model), backend=backend)(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert all(d.uses_kernel for d in backend.report.decisions if d.layer_name in table)
