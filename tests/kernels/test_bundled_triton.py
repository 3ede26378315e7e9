"""The bundled Triton kernels, run by Triton's interpreter on CPU tensors (no GPU needed).

`triton.jit` picks the interpreter when a kernel is decorated, and parts of Triton check the
flag again at import, so interpreted and compiled kernels cannot share a process. Without
TRITON_INTERPRET=1 this file therefore holds one test, which runs the file again in a child
process with the flag set; the checks themselves are only collected there.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.triton
pytest.importorskip("triton")
pytest.importorskip("numpy")  # the interpreter computes with numpy

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"

if not INTERPRETING:

    def test_triton_kernels_under_interpreter() -> None:
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"interpreter checks failed:\n{result.stdout}\n{result.stderr}"
        assert " passed" in result.stdout, result.stdout

else:
    import types
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any

    import torch
    from bundled_checks import constant_inputs, layer_name, load_variant, norm, rel_err, run
    from models import LlamaMLP
    from torch import nn

    from kernel_fx.demo import model as demo
    from kernel_fx.kernels import bundled_repo_path

    VARIANT_DIR = bundled_repo_path() / "build" / "torch-cuda"

    @pytest.fixture(scope="module")
    def package() -> types.ModuleType:
        return load_variant(VARIANT_DIR)

    def _rotary_inputs(layout: str) -> tuple[torch.Tensor, ...]:
        batch, heads, kv_heads, seq, dim = 2, 4, 2, 5, 12  # D/2 = 6: not a power of two
        if layout == "transposed":  # (B, T, H, D) storage, as after q_proj(...).view(...).transpose(1, 2)
            q = torch.randn(batch, seq, heads, dim).transpose(1, 2)
            k = torch.randn(batch, seq, kv_heads, dim).transpose(1, 2)
        else:
            q, k = torch.randn(batch, heads, seq, dim), torch.randn(batch, kv_heads, seq, dim)
        angles = torch.randn(batch, seq, dim // 2).repeat(1, 1, 2)  # (B, T, D)
        cos, sin = angles.cos(), angles.sin()
        if layout == "shared-cos":
            cos, sin = cos[0], sin[0]  # (T, D)
        return q, k, cos, sin

    # Odd row lengths exercise the masks; 37 rows and 4 programs exercise the partial weight grads.
    CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[], tuple[torch.Tensor, ...]]]] = {
        "RMSNorm": (lambda: norm(demo.RMSNorm, 100, eps=1e-5), lambda: (torch.randn(37, 100),)),
        "RMSNorm-3d": (lambda: norm(demo.RMSNorm, 64, eps=1e-5), lambda: (torch.randn(2, 3, 64),)),
        "AddRMSNorm": (lambda: norm(demo.AddRMSNorm, 100, eps=1e-5), lambda: (torch.randn(37, 100), torch.randn(37, 100))),
        "SiluAndMul": (demo.SiluAndMul, lambda: (torch.randn(5, 3, 2 * 50),)),
        "ApplyRotary": (demo.ApplyRotary, lambda: _rotary_inputs("contiguous")),
        "ApplyRotary-transposed": (demo.ApplyRotary, lambda: _rotary_inputs("transposed")),
        "ApplyRotary-shared-cos": (demo.ApplyRotary, lambda: _rotary_inputs("shared-cos")),
        "Attention": (demo.Attention, lambda: (torch.randn(1, 4, 6, 8), *torch.randn(2, 1, 2, 6, 8))),
        "LlamaMLP": (LlamaMLP, lambda: (torch.randn(5, 3, 16),)),  # intermediate 40: masked columns
        "LlamaMLP-bias": (lambda: LlamaMLP(bias=True), lambda: (torch.randn(7, 16),)),
    }

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
    @pytest.mark.parametrize("case", list(CASES))
    def test_forward_and_backward_match_float64(package: types.ModuleType, case: str, dtype: torch.dtype) -> None:
        torch.manual_seed(0)
        make_module, make_inputs = CASES[case]
        module, inputs = make_module(), make_inputs()
        kernel_forward = getattr(package.layers, layer_name(case)).forward
        outs, grads = run(module, kernel_forward, inputs, dtype, frozen=constant_inputs(case))
        exact_outs, exact_grads = run(module, type(module).forward, inputs, torch.float64, frozen=constant_inputs(case))
        tol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16 has 8 bits of mantissa
        for out, exact in zip(outs, exact_outs, strict=True):
            assert out.dtype == dtype and out.shape == exact.shape
            assert rel_err(out, exact) < tol
        for grad, exact in zip(grads, exact_grads, strict=True):
            assert grad.shape == exact.shape
            assert rel_err(grad, exact) < tol

    def test_rotary_output_keeps_input_layout(package: types.ModuleType) -> None:
        q, k, cos, sin = _rotary_inputs("transposed")
        q_out, k_out = package.layers.ApplyRotary.forward(demo.ApplyRotary(), q, k, cos, sin)
        assert q_out.stride() == q.stride() and k_out.stride() == k.stride()

    @pytest.mark.parametrize("layout", ["contiguous", "transposed"])
    def test_attention_output_follows_query_layout(package: types.ModuleType, layout: str) -> None:
        def make(heads: int) -> torch.Tensor:
            if layout == "transposed":  # as q_proj(x).view(B, T, H, D).transpose(1, 2)
                return torch.randn(2, 6, heads, 8).transpose(1, 2)
            return torch.randn(2, heads, 6, 8)

        q, k, v = make(4), make(2), make(2)
        out = package.layers.Attention.forward(demo.Attention(), q, k, v)  # (B, H, T, D)
        assert out.stride() == q.stride()  # so the `.transpose(1, 2).reshape(...)` that follows costs as in eager
        torch.testing.assert_close(out, demo.Attention.forward(demo.Attention(), q, k, v))

    def test_add_rms_norm_gradient_without_residual_use(package: types.ModuleType) -> None:
        # Only `normed` feeds the loss: the residual output's gradient arrives as None / zeros.
        module = norm(demo.AddRMSNorm, 16, eps=1e-5)
        x, r = torch.randn(3, 16, requires_grad=True), torch.randn(3, 16, requires_grad=True)
        normed, _ = package.layers.AddRMSNorm.forward(module, x, r)
        normed.sum().backward()
        x64, r64 = x.detach().double().requires_grad_(), r.detach().double().requires_grad_()
        demo.AddRMSNorm.forward(module.double(), x64, r64)[0].sum().backward()
        torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r.grad.double(), r64.grad, rtol=1e-5, atol=1e-6)

    def test_silu_mul_takes_strided_operands_and_promotes(package: types.ModuleType) -> None:
        ops = getattr(torch.ops, package.__name__)
        gate = torch.randn(24, 6, dtype=torch.float64).t().to(torch.bfloat16).requires_grad_()  # (6, 24), column-major
        up = torch.randn(6, 48)[:, ::2].requires_grad_()  # (6, 24) float32, row stride 48, column stride 2
        out = ops.silu_mul(gate, up)
        assert out.dtype == torch.float32 and out.is_contiguous()
        grad = torch.randn_like(out)
        out.backward(grad)
        g64, u64 = gate.detach().double().requires_grad_(), up.detach().double().requires_grad_()
        expected = torch.nn.functional.silu(g64) * u64
        expected.backward(grad.double())
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
        assert gate.grad.dtype == torch.bfloat16 and up.grad.dtype == torch.float32
        torch.testing.assert_close(gate.grad.double(), g64.grad, rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(up.grad.double(), u64.grad, rtol=1e-5, atol=1e-6)

    def test_silu_mul_refuses_broadcasting(package: types.ModuleType) -> None:
        ops = getattr(torch.ops, package.__name__)
        with pytest.raises(ValueError, match="one shape"):
            ops.silu_mul(torch.randn(3, 8), torch.randn(1, 8))

    def test_rotary_refuses_gradient_for_cos(package: types.ModuleType) -> None:
        q, k, cos, sin = _rotary_inputs("contiguous")
        cos.requires_grad_()
        q_out, _ = package.layers.ApplyRotary.forward(demo.ApplyRotary(), q, k, cos, sin)
        with pytest.raises(NotImplementedError, match="cos and sin"):
            q_out.sum().backward()

    OPCHECK_ARGS: dict[str, Callable[[], tuple[Any, ...]]] = {
        "rms_norm": lambda: (torch.randn(5, 24, requires_grad=True), torch.randn(24, requires_grad=True), 1e-6),
        "add_rms_norm": lambda: (
            torch.randn(5, 24, requires_grad=True),
            torch.randn(5, 24, requires_grad=True),
            torch.randn(24, requires_grad=True),
            1e-6,
        ),
        "silu_and_mul": lambda: (torch.randn(3, 2, 20, requires_grad=True),),
        "silu_mul": lambda: (torch.randn(3, 2, 20, requires_grad=True), torch.randn(3, 2, 20, requires_grad=True)),
        "apply_rotary": lambda: tuple(
            t.requires_grad_() if i < 2 else t for i, t in enumerate(_rotary_inputs("transposed"))
        ),
        "attention": lambda: tuple(
            torch.randn(shape, requires_grad=True) for shape in [(1, 4, 6, 8), (1, 2, 6, 8), (1, 2, 6, 8)]
        ),
    }

    @pytest.mark.parametrize("op_name", list(OPCHECK_ARGS))
    def test_custom_op_registration_passes_opcheck(package: types.ModuleType, op_name: str) -> None:
        # Schema, fake (meta) implementation incl. output strides, autograd registration, AOT dispatch.
        op = getattr(getattr(torch.ops, package.__name__), op_name).default
        torch.library.opcheck(op, OPCHECK_ARGS[op_name]())

    def test_layer_compiles_as_one_opaque_op(package: types.ModuleType) -> None:
        module = norm(demo.RMSNorm, 32, eps=1e-5)
        module.forward = types.MethodType(package.layers.RMSNorm.forward, module)
        x = torch.randn(4, 32, requires_grad=True)
        compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
        out = compiled(x)
        out.sum().backward()
        torch.testing.assert_close(out, demo.RMSNorm.forward(module, x), rtol=1e-5, atol=1e-5)
        assert x.grad is not None

    def test_llama_mlp_compiles_with_one_gating_op(package: types.ModuleType) -> None:
        module = LlamaMLP()
        module.forward = types.MethodType(package.layers.LlamaMLP.forward, module)
        graphs: list[torch.fx.GraphModule] = []

        def backend(gm: torch.fx.GraphModule, example_inputs: Any) -> Callable[..., Any]:
            graphs.append(gm)
            return gm.forward

        x = torch.randn(2, 3, 16, requires_grad=True)
        out = torch.compile(module, backend=backend, fullgraph=True)(x)
        out.sum().backward()
        torch.testing.assert_close(out, LlamaMLP.forward(module, x), rtol=1e-5, atol=1e-5)
        assert x.grad is not None
        silu_mul = getattr(torch.ops, package.__name__).silu_mul.default
        (graph,) = graphs
        calls = [n.target for n in graph.graph.nodes if n.op == "call_function"]
        assert calls.count(silu_mul) == 1
        assert not any("silu" in str(t) for t in calls if t is not silu_mul)  # the gating is the op alone

    def test_reimport_under_same_id_reuses_registered_ops(package: types.ModuleType, tmp_path: Path) -> None:
        import shutil

        name = package.__name__
        saved = {k: v for k, v in sys.modules.items() if k == name or k.startswith(name + ".")}
        for k in saved:
            del sys.modules[k]
        try:
            copy = tmp_path / VARIANT_DIR.name  # another path, the same metadata id: imported afresh
            shutil.copytree(VARIANT_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
            again = load_variant(copy)
            assert again is not package and again.__name__ == name
            assert again.layers.RMSNorm is not package.layers.RMSNorm
            x = torch.randn(2, 8)
            module = norm(demo.RMSNorm, 8, eps=1e-5)
            torch.testing.assert_close(again.layers.RMSNorm.forward(module, x), demo.RMSNorm.forward(module, x))
        finally:
            sys.modules.update(saved)
