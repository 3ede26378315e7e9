"""The bundled Triton kernels on a real GPU: bf16 at moderate sizes, eager and under inductor.

The kernel package is imported inside a fixture, not at collection, so that Triton is never
imported by this file on a machine without CUDA (the interpreter tests need a fresh import).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from models import LlamaMLP
from torch import nn

from kernel_fx.demo import model as demo
from kernel_fx.kernels import bundled_repo_path

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

VARIANT_DIR = bundled_repo_path() / "build" / "torch-cuda"
DEVICE = "cuda"


def load_variant(variant_dir: Path) -> types.ModuleType:
    """The variant imported by kernel_fx's own loader (under its metadata id)."""
    from kernel_fx.hub.local import get_local_kernel

    return get_local_kernel(variant_dir)


@pytest.fixture(scope="module")
def kernels() -> types.ModuleType:
    pytest.importorskip("triton")
    return load_variant(VARIANT_DIR).layers


def _norm(cls: type[nn.Module], hidden: int) -> nn.Module:
    module = cls(hidden, eps=1e-6)
    with torch.no_grad():
        module.weight.copy_(1.0 + 0.1 * torch.randn(hidden))
    return module


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
    "RMSNorm": (lambda: _norm(demo.RMSNorm, 4096), lambda: (torch.randn(2, 1000, 4096),)),
    "RMSNorm-odd": (lambda: _norm(demo.RMSNorm, 1000), lambda: (torch.randn(777, 1000),)),
    "AddRMSNorm": (lambda: _norm(demo.AddRMSNorm, 4096), lambda: (torch.randn(2048, 4096), torch.randn(2048, 4096))),
    "SiluAndMul": (demo.SiluAndMul, lambda: (torch.randn(2, 1024, 2 * 14336),)),
    "SiluAndMul-odd": (demo.SiluAndMul, lambda: (torch.randn(333, 2 * 1000),)),
    "ApplyRotary": (demo.ApplyRotary, _rotary_inputs),
    "ApplyRotary-shared-cos": (demo.ApplyRotary, lambda: _rotary_inputs(shared_cos=True)),
    "Attention": (demo.Attention, _attention_inputs),
    "LlamaMLP": (lambda: LlamaMLP(2048, 5632), lambda: (torch.randn(2, 512, 2048),)),
    "LlamaMLP-odd": (lambda: LlamaMLP(1000, 2750, bias=True), lambda: (torch.randn(333, 1000),)),
}
NO_GRAD_INPUTS = {"ApplyRotary": 2}  # cos and sin


def _outputs(result: Any) -> tuple[torch.Tensor, ...]:
    return result if isinstance(result, tuple) else (result,)


def _run(
    module: nn.Module, forward: Callable[..., Any], inputs: tuple[torch.Tensor, ...], dtype: torch.dtype, case: str
) -> tuple[tuple[torch.Tensor, ...], list[torch.Tensor]]:
    """Outputs and gradients (inputs, then parameters) of a fixed random projection of them."""
    module = module.to(DEVICE, dtype)
    frozen = NO_GRAD_INPUTS.get(case.split("-")[0], 0)
    leaves = [t.detach().to(DEVICE, dtype) for t in inputs]
    for t in leaves[: len(leaves) - frozen]:
        t.requires_grad_()
    outs = _outputs(types.MethodType(forward, module)(*leaves))
    gen = torch.Generator(DEVICE).manual_seed(1)
    loss = sum(
        (o.double() * torch.randn(o.shape, generator=gen, device=DEVICE, dtype=torch.float64)).sum() for o in outs
    )
    wrt = [t for t in leaves if t.requires_grad] + list(module.parameters())
    return outs, list(torch.autograd.grad(loss, wrt))


def _rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("case", list(CASES))
def test_bf16_forward_and_backward_match_float64(kernels: types.ModuleType, case: str) -> None:
    torch.manual_seed(0)
    make_module, make_inputs = CASES[case]
    module, inputs = make_module(), make_inputs()
    outs, grads = _run(module, getattr(kernels, case.split("-")[0]).forward, inputs, torch.bfloat16, case)
    eager_outs, eager_grads = _run(module, type(module).forward, inputs, torch.bfloat16, case)
    exact_outs, exact_grads = _run(module, type(module).forward, inputs, torch.float64, case)
    for out, eager, exact in zip(outs, eager_outs, exact_outs, strict=True):
        assert out.dtype == torch.bfloat16 and out.shape == exact.shape
        # At least as close to the exact result as bf16 eager, and within bf16 rounding.
        assert _rel_err(out, exact) < max(1.05 * _rel_err(eager, exact), 1e-3) and _rel_err(out, exact) < 1e-2
    for grad, exact in zip(grads, exact_grads, strict=True):
        assert grad.shape == exact.shape
        assert _rel_err(grad, exact) < 2e-2


def test_fp32_rms_norm_is_tight(kernels: types.ModuleType) -> None:
    torch.manual_seed(0)
    module, (x,) = _norm(demo.RMSNorm, 4096), (torch.randn(512, 4096),)
    outs, grads = _run(module, kernels.RMSNorm.forward, (x,), torch.float32, "RMSNorm")
    exact_outs, exact_grads = _run(module, demo.RMSNorm.forward, (x,), torch.float64, "RMSNorm")
    assert _rel_err(outs[0], exact_outs[0]) < 1e-6
    for grad, exact in zip(grads, exact_grads, strict=True):
        assert _rel_err(grad, exact) < 1e-5


@pytest.mark.parametrize("name", ["RMSNorm", "AddRMSNorm", "SiluAndMul", "ApplyRotary", "Attention", "LlamaMLP"])
def test_inductor_compiles_layer_with_backward(kernels: types.ModuleType, name: str) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    make_module, make_inputs = CASES[name]
    module = make_module().to(DEVICE, torch.bfloat16)
    module.forward = types.MethodType(getattr(kernels, name).forward, module)
    inputs = [t.to(DEVICE, torch.bfloat16) for t in make_inputs()]
    for t in inputs[: len(inputs) - NO_GRAD_INPUTS.get(name, 0)]:
        t.requires_grad_()
    compiled = torch.compile(module, fullgraph=True)
    outs = _outputs(compiled(*inputs))
    expected = _outputs(getattr(kernels, name).forward(module, *inputs))
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
    assert _rel_err(logits, expected.double()) < 2e-2
    logits.logsumexp(-1).mean().backward()
    for p, ref in zip(model.parameters(), expected_grads, strict=True):
        assert _rel_err(p.grad, ref.double()) < 5e-2
