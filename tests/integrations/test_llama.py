"""transformers' Llama with the bundled kernels: marking, mapping, and equal numbers on CPU."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

import kernel_fx
from kernel_fx.integrations import LLAMA_LAYERS, llama_mapping, mark_llama

transformers = pytest.importorskip("transformers")
from transformers.models.llama import modeling_llama  # noqa: E402

LAYER_NAMES = set(LLAMA_LAYERS.values())
NORMS = ("input_layernorm", "post_attention_layernorm")


def assert_mapping_honoured(decisions) -> None:
    """kernel_fx's promise, whatever else the installed transformers marks: every site of a mapped layer runs
    its kernel, and every other site runs its original with the reason: no mapping, or (compiled) that it is
    inside a substituted call."""
    assert decisions, "no site was reported"
    for d in decisions:
        if d.layer_name in LAYER_NAMES:
            assert d.uses_kernel and d.rejected is None, d
        else:
            assert not d.uses_kernel and d.rejected.reason in {kernel_fx.Reason.NO_MAPPING, kernel_fx.Reason.ENCLOSED}, d


def tiny_llama(num_hidden_layers: int = 2, **overrides: object) -> torch.nn.Module:
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=64,
        **overrides,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).float()
    with torch.no_grad():  # RMSNorm weights start at 1: make them differ so the kernel must read them
        for module in model.modules():
            if isinstance(module, modeling_llama.LlamaRMSNorm):
                module.weight.add_(0.1 * torch.randn_like(module.weight))
    return model


def loss_and_grads(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    out = model(ids, labels=ids, use_cache=False)  # a cache object is no graph value: sites taking one are skipped
    out.loss.backward()
    return out.logits.detach(), [p.grad.clone() for p in model.parameters()]


def test_mark_llama_marks_both_classes_once() -> None:
    mark_llama()
    forwards = {name: getattr(modeling_llama, name).forward for name in LLAMA_LAYERS}
    mark_llama()
    for class_name, layer_name in LLAMA_LAYERS.items():
        cls = getattr(modeling_llama, class_name)
        assert cls.kernel_layer_name == layer_name
        assert cls.forward is forwards[class_name]  # not wrapped a second time


def test_llama_mapping_names_bundled_layers_for_cpu_and_cuda() -> None:
    mapping = llama_mapping()
    assert set(mapping) == LAYER_NAMES
    for layer_name, repos in mapping.items():
        assert set(repos) == {"cpu", "cuda"}
        kernel = {repo.layer_name for repo in repos.values()}
        assert kernel == ({layer_name} if layer_name != "LlamaAttention" else kernel & {"LlamaAttention", "LlamaAttentionCacheArg"})
        assert len(kernel) == 1
    assert mapping["LlamaMLP"]["cpu"].load(backend="cpu").__name__ == "LlamaMLP"


def test_the_attention_kernel_matches_the_installed_transformers() -> None:
    import inspect

    kernel = llama_mapping()["LlamaAttention"]["cpu"].load(backend="cpu")
    theirs = inspect.signature(inspect.unwrap(modeling_llama.LlamaAttention.forward)).parameters
    assert list(inspect.signature(kernel.forward).parameters) == list(theirs)


def test_kernelized_llama_matches_original_forward_and_backward() -> None:
    mark_llama()
    model = tiny_llama().train()
    ids = torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(0))
    expected_logits, expected_grads = loss_and_grads(model, ids)

    with kernel_fx.use_kernel_mapping(llama_mapping()):
        kernel_fx.kernelize(model, device="cpu")
    logits, grads = loss_and_grads(model, ids)

    torch.testing.assert_close(logits, expected_logits)
    for grad, expected in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected)

    decisions = [d for d in kernel_fx.report(model).decisions if d.layer_name in LAYER_NAMES]
    sites = {(d.path, d.layer_name) for d in decisions}
    assert sites == {
        ("model.norm", "RMSNorm"),
        *((f"model.layers.{i}.{norm}", "RMSNorm") for i in range(2) for norm in NORMS),
        *((f"model.layers.{i}.mlp", "LlamaMLP") for i in range(2)),
        *((f"model.layers.{i}.self_attn", "LlamaAttention") for i in range(2)),
    }
    assert all(d.uses_kernel and d.rejected is None for d in decisions), kernel_fx.report(model)


def test_kernelized_llama_mlp_traces_into_one_graph() -> None:
    mark_llama()
    mlp = tiny_llama(num_hidden_layers=1).model.layers[0].mlp
    x = torch.randn(2, 5, 64)
    expected = mlp(x)
    with kernel_fx.use_kernel_mapping(llama_mapping()):
        kernel_fx.kernelize(mlp, device="cpu")
    compiled = torch.compile(mlp, backend="eager", fullgraph=True)  # the SiLU check must not break the graph
    torch.testing.assert_close(compiled(x), expected)
    decisions = kernel_fx.report(mlp).decisions
    assert_mapping_honoured(decisions)
    assert [d.path for d in decisions if d.uses_kernel] == [""]  # the MLP itself


def test_hubkernels_backend_matches_original_on_llama() -> None:
    mark_llama()
    model = tiny_llama().train()
    ids = torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(0))
    expected_logits, expected_grads = loss_and_grads(model, ids)
    with kernel_fx.use_kernel_mapping(llama_mapping()):
        logits, grads = loss_and_grads(torch.compile(model, backend="hubkernels"), ids)
        decisions = [d for d in kernel_fx.last_compile_report().decisions if d.layer_name in LAYER_NAMES]
    torch.testing.assert_close(logits, expected_logits)
    for grad, expected in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected)
    assert len(decisions) == 9 and all(d.uses_kernel for d in decisions)


def test_llama_mlp_kernel_refuses_a_non_silu_model() -> None:
    mark_llama()
    model = tiny_llama(num_hidden_layers=1, hidden_act="gelu")
    with kernel_fx.use_kernel_mapping(llama_mapping()):
        kernel_fx.kernelize(model, device="cpu")
    with pytest.raises(ValueError, match="hidden_act 'silu'"):
        model(torch.tensor([[1, 2, 3]]))


def test_mark_llama_without_transformers_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers.models.llama.modeling_llama", None)
    with pytest.raises(ImportError, match=r"pip install 'transformers>=5.0'"):
        mark_llama()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_kernelized_llama_on_cuda_matches_original_in_bfloat16() -> None:
    pytest.importorskip("triton")
    mark_llama()
    model = tiny_llama().to("cuda", torch.bfloat16).train()
    ids = torch.randint(0, 128, (2, 64), device="cuda")
    expected_logits, expected_grads = loss_and_grads(model, ids)
    with kernel_fx.use_kernel_mapping(llama_mapping()):
        kernel_fx.kernelize(model, device="cuda")
    assert all(d.uses_kernel for d in kernel_fx.report(model).decisions if d.layer_name in LAYER_NAMES)
    logits, grads = loss_and_grads(model, ids)

    def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
        return ((a.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()

    assert rel_err(logits, expected_logits) < 2e-2
    for grad, expected in zip(grads, expected_grads, strict=True):
        assert rel_err(grad, expected) < 5e-2


def test_kernelized_attention_with_a_cache_and_a_padding_mask_matches() -> None:
    mark_llama()
    model = tiny_llama().eval()
    reference = copy.deepcopy(model)
    with kernel_fx.use_kernel_mapping(llama_mapping()):
        kernel_fx.kernelize(model, device="cpu")
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :2] = 0  # left padding: attention takes the masked SDPA path
    with torch.no_grad():
        for kwargs in ({"use_cache": True}, {"attention_mask": mask, "use_cache": True}):
            torch.testing.assert_close(model(ids, **kwargs).logits, reference(ids, **kwargs).logits)


def test_causal_mask_skip_keeps_the_numbers_and_is_causal_under_compile() -> None:
    from kernel_fx.integrations import skip_causal_mask_when_compiling

    mark_llama()
    model = tiny_llama().eval()
    reference = copy.deepcopy(model)
    skip_causal_mask_when_compiling(model)
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :3] = 0
    backend = kernel_fx.HubKernelsBackend(inner="eager")
    with kernel_fx.use_kernel_mapping(llama_mapping()), torch.no_grad():
        compiled = torch.compile(model, backend=backend)
        torch.testing.assert_close(compiled(ids, use_cache=False).logits, reference(ids, use_cache=False).logits)
        torch.testing.assert_close(compiled(ids, attention_mask=mask, use_cache=False).logits,
                                   reference(ids, attention_mask=mask, use_cache=False).logits)
    assert_mapping_honoured([d for r in backend.records for d in r.decisions])


def test_under_compile_the_unpadded_attention_gets_no_mask() -> None:
    from kernel_fx.integrations import skip_causal_mask_when_compiling

    model = tiny_llama().eval()
    skip_causal_mask_when_compiling(model)
    seen = []

    def record_mask(module, args, kwargs):
        seen.append(kwargs.get("attention_mask"))

    model.model.layers[0].self_attn.register_forward_pre_hook(record_mask, with_kwargs=True)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm

    with torch.no_grad():
        torch.compile(model, backend=backend)(torch.randint(0, 128, (2, 9)), use_cache=False)
    assert seen == [None] and len(graphs) == 1


def test_causal_skip_mask_returns_none_only_for_pure_causal_masks() -> None:
    from transformers.masking_utils import causal_mask_function

    from kernel_fx.integrations.llama import _causal_skipping_sdpa_mask

    common = dict(batch_size=2, q_length=5, kv_length=5, mask_function=causal_mask_function, allow_is_causal_skip=True)
    assert _causal_skipping_sdpa_mask(**common, attention_mask=None) is None
    padded = torch.ones(2, 5, dtype=torch.bool)
    padded[0, 0] = False
    assert _causal_skipping_sdpa_mask(**common, attention_mask=padded).shape == (2, 1, 5, 5)
