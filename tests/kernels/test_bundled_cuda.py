"""The bundled Triton kernels on a real GPU: bf16 at moderate sizes, eager and under inductor.

The kernel package is imported inside a fixture, not at collection, so that Triton is never
imported by this file on a machine without CUDA (the interpreter tests need a fresh import).
"""

from __future__ import annotations

import types
from collections.abc import Callable

import pytest
import torch
from bundled_checks import constant_inputs, layer_name, load_variant, norm, outputs, rel_err, run
from models import LlamaMLP
from torch import nn

from kernel_fx.demo import model as demo
from kernel_fx.kernels import bundled_repo_path

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

VARIANT_DIR = bundled_repo_path() / "build" / "torch-cuda"
DEVICE = "cuda"


@pytest.fixture(scope="module")
def kernels() -> types.ModuleType:
    pytest.importorskip("triton")
    return load_variant(VARIANT_DIR).layers


def _rotary_inputs(shared_cos: bool = False) -> tuple[torch.Tensor, ...]:
    batch, heads, kv_heads, seq, dim = 2, 16, 8, 512, 128
    q = torch.randn(batch, seq, heads, dim).transpose(1, 2)  # (B, H, T, D) over (B, T, H, D) storage
    k = torch.randn(batch, seq, kv_heads, dim).transpose(1, 2)
    angles = torch.randn(batch, seq, dim // 2).repeat(1, 1, 2)  # (B, T, D)
    cos, sin = angles.cos(), angles.sin()
    if shared_cos:
        cos, sin = cos[0], sin[0]  # (T, D)
    return q, k, cos, sin


def _attention_inputs() -> tuple[torch.Tensor, ...]:
    batch, heads, kv_heads, seq, dim = 2, 16, 8, 512, 128
    q = torch.randn(batch, seq, heads, dim).transpose(1, 2)  # (B, H, T, D)
    k = torch.randn(batch, seq, kv_heads, dim).transpose(1, 2)
    v = torch.randn(batch, seq, kv_heads, dim).transpose(1, 2)
    return q, k, v


CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[], tuple[torch.Tensor, ...]]]] = {
    "RMSNorm": (lambda: norm(demo.RMSNorm, 4096, eps=1e-6), lambda: (torch.randn(2, 1000, 4096),)),
    "RMSNorm-odd": (lambda: norm(demo.RMSNorm, 1000, eps=1e-6), lambda: (torch.randn(777, 1000),)),
    "AddRMSNorm": (lambda: norm(demo.AddRMSNorm, 4096, eps=1e-6), lambda: (torch.randn(2048, 4096), torch.randn(2048, 4096))),
    "SiluAndMul": (demo.SiluAndMul, lambda: (torch.randn(2, 1024, 2 * 14336),)),
    "SiluAndMul-odd": (demo.SiluAndMul, lambda: (torch.randn(333, 2 * 1000),)),
    "ApplyRotary": (demo.ApplyRotary, _rotary_inputs),
    "ApplyRotary-shared-cos": (demo.ApplyRotary, lambda: _rotary_inputs(shared_cos=True)),
    "Attention": (demo.Attention, _attention_inputs),
    "LlamaMLP": (lambda: LlamaMLP(2048, 5632), lambda: (torch.randn(2, 512, 2048),)),
    "LlamaMLP-odd": (lambda: LlamaMLP(1000, 2750, bias=True), lambda: (torch.randn(333, 1000),)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bf16_forward_and_backward_match_float64(kernels: types.ModuleType, case: str) -> None:
    torch.manual_seed(0)
    make_module, make_inputs = CASES[case]
    module, inputs = make_module(), make_inputs()
    on_gpu = {"device": DEVICE, "frozen": constant_inputs(case)}
    outs, grads = run(module, getattr(kernels, layer_name(case)).forward, inputs, torch.bfloat16, **on_gpu)
    eager_outs, eager_grads = run(module, type(module).forward, inputs, torch.bfloat16, **on_gpu)
    exact_outs, exact_grads = run(module, type(module).forward, inputs, torch.float64, **on_gpu)
    for out, eager, exact in zip(outs, eager_outs, exact_outs, strict=True):
        assert out.dtype == torch.bfloat16 and out.shape == exact.shape
        # At least as close to the exact result as bf16 eager, and within bf16 rounding.
        assert rel_err(out, exact) < max(1.05 * rel_err(eager, exact), 1e-3) and rel_err(out, exact) < 1e-2
    for grad, exact in zip(grads, exact_grads, strict=True):
        assert grad.shape == exact.shape
        assert rel_err(grad, exact) < 2e-2


def test_fp32_rms_norm_is_tight(kernels: types.ModuleType) -> None:
    torch.manual_seed(0)
    module, (x,) = norm(demo.RMSNorm, 4096, eps=1e-6), (torch.randn(512, 4096),)
    outs, grads = run(module, kernels.RMSNorm.forward, (x,), torch.float32, device=DEVICE)
    exact_outs, exact_grads = run(module, demo.RMSNorm.forward, (x,), torch.float64, device=DEVICE)
    assert rel_err(outs[0], exact_outs[0]) < 1e-6
    for grad, exact in zip(grads, exact_grads, strict=True):
        assert rel_err(grad, exact) < 1e-5


@pytest.mark.parametrize("name", ["RMSNorm", "AddRMSNorm", "SiluAndMul", "ApplyRotary", "Attention", "LlamaMLP"])
def test_inductor_compiles_layer_with_backward(kernels: types.ModuleType, name: str) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    make_module, make_inputs = CASES[name]
    module = make_module().to(DEVICE, torch.bfloat16)
    module.forward = types.MethodType(getattr(kernels, name).forward, module)
    inputs = [t.to(DEVICE, torch.bfloat16) for t in make_inputs()]
    for t in inputs[: len(inputs) - constant_inputs(name)]:
        t.requires_grad_()
    compiled = torch.compile(module, fullgraph=True)
    outs = outputs(compiled(*inputs))
    expected = outputs(getattr(kernels, name).forward(module, *inputs))
    for out, ref in zip(outs, expected, strict=True):
        torch.testing.assert_close(out, ref)
    sum(o.float().sum() for o in outs).backward()
    assert all(t.grad is not None for t in inputs if t.requires_grad)


def test_kernelized_demo_model_matches_original(kernels: types.ModuleType) -> None:
    model = demo.build_demo_model(device=DEVICE, dtype=torch.bfloat16).train()
    ids = torch.randint(0, model.config.vocab_size, (2, 256), device=DEVICE)
    expected = model(ids).float()
    expected.logsumexp(-1).mean().backward()
    expected_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for module in model.modules():
        name = getattr(type(module), "kernel_layer_name", None)
        if name is not None:
            module.forward = types.MethodType(getattr(kernels, name).forward, module)
    logits = model(ids).float()
    assert rel_err(logits, expected.double()) < 2e-2
    logits.logsumexp(-1).mean().backward()
    for p, ref in zip(model.parameters(), expected_grads, strict=True):
        assert rel_err(p.grad, ref.double()) < 5e-2
