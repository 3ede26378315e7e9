"""The bundled CPU kernels compute the demo layers' (and a Llama MLP's) functions, forward and backward.

The variant is imported the way the loader does it (by path, under its metadata id), and each
kernel forward is bound to a demo module instance with `types.MethodType`.
"""

from __future__ import annotations

import inspect
import json
import types
from collections.abc import Callable

import pytest
import torch
from bundled_checks import layer_name, load_variant, norm, run
from models import LlamaMLP
from torch import nn

from kernel_fx.demo import model as demo
from kernel_fx.kernels import bundled_repo_path
from kernel_fx.validation import ALLOWED_MEMBERS

VARIANT_DIR = bundled_repo_path() / "build" / "torch-cpu"
LAYER_NAMES = ["RMSNorm", "AddRMSNorm", "SiluAndMul", "ApplyRotary", "Attention", "LlamaMLP"]
# The layer each kernel replaces: the demo's, and transformers' LlamaMLP as re-written in tests/models.py.
REFERENCES: dict[str, type[nn.Module]] = {name: getattr(demo, name) for name in LAYER_NAMES if name != "LlamaMLP"}
REFERENCES["LlamaMLP"] = LlamaMLP


@pytest.fixture(scope="module")
def kernels() -> types.ModuleType:
    return load_variant(VARIANT_DIR).layers


# --- cases: a demo module and inputs for each extensible layer ------------------------------------


def _rotary_inputs(batch_cos: bool) -> tuple[torch.Tensor, ...]:
    q = torch.randn(2, 4, 7, 16)  # (B, Hq, T, D)
    k = torch.randn(2, 2, 7, 16)  # (B, Hk, T, D)
    angles = torch.randn(2 if batch_cos else 1, 7, 8).repeat(1, 1, 2)  # (B, T, D): Llama's [f, f]
    cos, sin = angles.cos(), angles.sin()
    if not batch_cos:
        cos, sin = cos[0], sin[0]  # (T, D)
    return q, k, cos, sin


CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[], tuple[torch.Tensor, ...]]]] = {
    "RMSNorm": (lambda: norm(demo.RMSNorm, 64, eps=1e-5), lambda: (torch.randn(3, 5, 64),)),
    "AddRMSNorm": (lambda: norm(demo.AddRMSNorm, 64, eps=1e-5), lambda: (torch.randn(3, 5, 64), torch.randn(3, 5, 64))),
    "SiluAndMul": (demo.SiluAndMul, lambda: (torch.randn(3, 5, 2 * 24),)),
    "ApplyRotary": (demo.ApplyRotary, lambda: _rotary_inputs(batch_cos=True)),
    "ApplyRotary-shared-cos": (demo.ApplyRotary, lambda: _rotary_inputs(batch_cos=False)),
    "Attention": (demo.Attention, lambda: (torch.randn(2, 4, 9, 16), *torch.randn(2, 2, 2, 9, 16))),
    "LlamaMLP": (LlamaMLP, lambda: (torch.randn(3, 5, 16),)),
    "LlamaMLP-bias": (lambda: LlamaMLP(bias=True), lambda: (torch.randn(7, 16),)),
}


# --- tests ----------------------------------------------------------------------------------------


def test_metadata_names_the_package() -> None:
    metadata = json.loads((VARIANT_DIR / "metadata.json").read_text())
    assert metadata["id"] == "kernel_fx_bundled_cpu"
    assert metadata["name"] == "kernel-fx-bundled"
    assert metadata["version"] == 1
    assert metadata["backend"]["type"] == "cpu"


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_layer_class_has_only_forward(kernels: types.ModuleType, name: str) -> None:
    cls = getattr(kernels, name)
    assert issubclass(cls, nn.Module)
    members = {k for k in vars(cls) if not k.startswith("__")}
    assert members <= ALLOWED_MEMBERS  # what validation accepts: forward and the declared flags
    assert "__init__" not in vars(cls)
    assert cls.has_backward is True and cls.can_torch_compile is True


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_forward_signature_matches_reference_layer(kernels: types.ModuleType, name: str) -> None:
    kernel_sig = inspect.signature(getattr(kernels, name).forward)
    reference_sig = inspect.signature(REFERENCES[name].forward)
    assert kernel_sig == reference_sig


@pytest.mark.parametrize("case", list(CASES))
def test_matches_demo_forward_and_backward(kernels: types.ModuleType, case: str) -> None:
    torch.manual_seed(0)
    make_module, make_inputs = CASES[case]
    module, inputs = make_module(), make_inputs()
    kernel_forward = getattr(kernels, layer_name(case)).forward
    original_forward = type(module).forward

    outs, grads = run(module, kernel_forward, inputs, torch.float32)
    ref_outs, ref_grads = run(module, original_forward, inputs, torch.float32)
    exact_outs, exact_grads = run(module, original_forward, inputs, torch.float64)

    for out, ref, exact in zip(outs, ref_outs, exact_outs, strict=True):
        assert out.dtype == ref.dtype and out.shape == ref.shape
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1e-5)
    for grad, ref, exact in zip(grads, ref_grads, exact_grads, strict=True):
        torch.testing.assert_close(grad, ref)
        torch.testing.assert_close(grad.double(), exact, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["RMSNorm", "AddRMSNorm", "SiluAndMul", "ApplyRotary", "LlamaMLP"])
def test_bfloat16_keeps_dtype_and_matches(kernels: types.ModuleType, case: str) -> None:
    torch.manual_seed(0)
    make_module, make_inputs = CASES[case]
    module, inputs = make_module(), make_inputs()
    outs, _ = run(module, getattr(kernels, case).forward, inputs, torch.bfloat16)
    ref_outs, _ = run(module, type(module).forward, inputs, torch.bfloat16)
    for out, ref in zip(outs, ref_outs, strict=True):
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("act_fn", [nn.GELU(), nn.Identity()], ids=["gelu", "identity"])
def test_llama_mlp_refuses_other_activations(kernels: types.ModuleType, act_fn: nn.Module) -> None:
    module = LlamaMLP()
    module.act_fn = act_fn
    with pytest.raises(ValueError, match="silu"):
        kernels.LlamaMLP.forward(module, torch.randn(2, 16))


def test_kernelized_demo_model_matches_original(kernels: types.ModuleType) -> None:
    model = demo.build_demo_model(demo.DemoConfig(num_hidden_layers=2))
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    expected = model(ids)
    swapped = 0
    for module in model.modules():
        name = getattr(type(module), "kernel_layer_name", None)
        if name is not None:
            module.forward = types.MethodType(getattr(kernels, name).forward, module)
            swapped += 1
    assert swapped == 2 * 5 + 1  # five extensible layers per decoder layer, plus the final norm
    torch.testing.assert_close(model(ids), expected)
