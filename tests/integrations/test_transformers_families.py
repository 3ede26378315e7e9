"""One integration for every transformers family: `prepare(model)` and `transformers_mapping()`
give kernels to what transformers marks (RMSNorm, activations, rotary) and to what prepare marks
(gated MLP, Gemma's norm, attention through the "kernel_fx" implementation), eagerly and under
hubkernels, with eager's numbers, gradients and generated tokens. Every site that runs a kernel
is counted; every other site has a reason."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

import kernel_fx
from kernel_fx import HubKernelsBackend, Reason
from kernel_fx.integrations import prepare, transformers_mapping
from kernel_fx.integrations.transformers import TRANSFORMERS_KERNELS

transformers = pytest.importorskip("transformers")

SIZES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=128, max_position_embeddings=64)
FAMILIES = {  # name: (model class, config)
    "llama": ("LlamaForCausalLM", lambda: transformers.LlamaConfig(**SIZES)),
    "mistral": ("MistralForCausalLM", lambda: transformers.MistralConfig(**SIZES)),
    "qwen2": ("Qwen2ForCausalLM", lambda: transformers.Qwen2Config(**SIZES)),
    "qwen3": ("Qwen3ForCausalLM", lambda: transformers.Qwen3Config(**SIZES, head_dim=16)),
    "qwen3_moe": ("Qwen3MoeForCausalLM", lambda: transformers.Qwen3MoeConfig(**SIZES, head_dim=16, num_experts=4, num_experts_per_tok=2,
                                                                             moe_intermediate_size=32)),
    "mixtral": ("MixtralForCausalLM", lambda: transformers.MixtralConfig(**SIZES, num_local_experts=2, num_experts_per_tok=1)),
    "gemma2": ("Gemma2ForCausalLM", lambda: transformers.Gemma2Config(**SIZES, head_dim=16)),
    "phi3": ("Phi3ForCausalLM", lambda: transformers.Phi3Config(**SIZES, pad_token_id=0)),
    "gpt2": ("GPT2LMHeadModel", lambda: transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=64,
                                                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
    "bert": ("BertForMaskedLM", lambda: transformers.BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                                 num_attention_heads=4, vocab_size=128, max_position_embeddings=64,
                                                                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)),
}
CAUSAL = [name for name in FAMILIES if name != "bert"]  # dropout is off everywhere: training steps compare exactly
INDUCTOR = ["llama", "qwen3"]


@pytest.fixture
def counted(monkeypatch):
    """Every bundled CPU kernel the mapping names, with a call counter per layer name."""
    calls = dict.fromkeys(TRANSFORMERS_KERNELS, 0)
    for layer, repos in transformers_mapping().items():
        kernel = repos["cpu"].load(backend="cpu")
        original = kernel.forward

        @functools.wraps(original)
        def forward(self, *args, _original=original, _layer=layer, **kwargs):
            calls[_layer] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(kernel, "forward", forward)
    return calls


def tiny(name: str) -> torch.nn.Module:
    model_class, config = FAMILIES[name]
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(config())
    prepare(model)
    return model


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    return ids, mask


def loss_and_grads(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, list]:
    model.zero_grad()
    loss = model(ids, attention_mask=mask, labels=ids).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() if p.grad is not None else None for p in model.parameters()]


def check_decisions(decisions: list, calls: dict) -> None:
    """Every site whose layer is mapped runs its kernel, and that kernel ran; the others say why."""
    assert decisions
    for d in decisions:
        if d.uses_kernel:
            assert calls[d.layer_name] > 0, d
        else:
            assert d.rejected is not None and (d.layer_name not in TRANSFORMERS_KERNELS or d.rejected.reason is Reason.ENCLOSED), d


@pytest.mark.parametrize("name", list(FAMILIES))
def test_eager_kernelize_and_hubkernels_match_eager(name, counted):
    model = tiny(name).train()
    ids, mask = inputs()
    expected = loss_and_grads(copy.deepcopy(model), ids, mask)
    with kernel_fx.use_kernel_mapping(transformers_mapping()):
        eager = kernel_fx.kernelize(copy.deepcopy(model), device="cpu")
        loss, grads = loss_and_grads(eager, ids, mask)
        eager_decisions = kernel_fx.report(eager).decisions
        check_decisions(eager_decisions, counted)
        counted.update(dict.fromkeys(counted, 0))
        backend = HubKernelsBackend(inner="aot_eager")
        compiled_loss, compiled_grads = loss_and_grads(torch.compile(copy.deepcopy(model), backend=backend), ids, mask)
    for got, got_grads in ((loss, grads), (compiled_loss, compiled_grads)):
        torch.testing.assert_close(got, expected[0], rtol=1e-4, atol=1e-5)
        for g, e in zip(got_grads, expected[1]):
            if e is not None:
                torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    check_decisions(backend.report.decisions, counted)
    assert {d.path for d in backend.report.decisions} == {d.path for d in eager_decisions}
    assert any(d.uses_kernel for d in eager_decisions)


@pytest.mark.parametrize("name", CAUSAL)
def test_generate_with_kernels_gives_eager_tokens(name, counted):
    model = tiny(name).eval()
    ids, mask = inputs()
    expected = copy.deepcopy(model).generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    generating = copy.deepcopy(model)
    backend = HubKernelsBackend(inner="eager")
    generating.forward = torch.compile(generating.forward, backend=backend)
    with kernel_fx.use_kernel_mapping(transformers_mapping()):
        tokens = generating.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    assert torch.equal(tokens, expected)
    check_decisions(backend.report.decisions, counted)


@pytest.mark.parametrize("name", INDUCTOR)
def test_inductor_keeps_the_numbers(name, counted):
    model = tiny(name).eval()
    ids, mask = inputs()
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
        backend = HubKernelsBackend(inner="inductor")
        with kernel_fx.use_kernel_mapping(transformers_mapping()):
            got = torch.compile(copy.deepcopy(model), backend=backend)(ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    check_decisions(backend.report.decisions, counted)


def test_prepare_says_what_it_does_not_cover():
    notes = {name: prepare(tiny(name)).notes for name in ("qwen3_moe", "gemma2", "gpt2")}
    assert any("MoE experts" in note for note in notes["qwen3_moe"])
    assert any("softcapping" in note or "attn_implementation" in note for note in notes["gemma2"])
    assert notes["gpt2"] == [] or all("attention" in note for note in notes["gpt2"])
