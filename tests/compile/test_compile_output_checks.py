"""Issue 14 finding 6, compiled: the pass compares a kernel's traced outputs with the original call's
example values at compile time, and keeps the original forward (reason "wrong output") on a mismatch."""

from __future__ import annotations

import pytest
import torch
from helpers_compile import INNERS
from models import Scale, scale_source
from torch import nn

import kernel_fx
from kernel_fx import KernelizeError, LocalLayerRepository, Reason, use_kernel_mapping

WRONG_SHAPE = "return (x * self.weight * self.factor)[:1]"  # (1, 8) for (2, 8)
WRONG_DTYPE = "return (x * self.weight * self.factor).double()"
WRONG_STRUCTURE = "return x * self.weight * self.factor, x"
RIGHT = "return torch.mul(x, self.weight * self.factor)"


def _mapping(kernel_repo, forward):
    repo = kernel_repo({"torch-cpu": {"layers.py": scale_source(forward=forward)}})
    return {"Scale": {"cpu": LocalLayerRepository(repo, layer_name="Scale")}}


@pytest.mark.parametrize("inner", INNERS)
@pytest.mark.parametrize(("forward", "says"), [
    (WRONG_SHAPE, "output 0 has shape (1, 8), the original (2, 8)"),
    (WRONG_DTYPE, "output 0 has dtype torch.float64, the original torch.float32"),
    (WRONG_STRUCTURE, "the kernel returned tuple; the original forward returns one tensor"),
], ids=["shape", "dtype", "structure"])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_wrong_output_keeps_the_original(kernel_repo, inner, forward, says, grad):
    model = nn.Sequential(Scale(8))
    x = torch.randn(2, 8, requires_grad=grad)
    expected = model(x)
    backend = kernel_fx.HubKernelsBackend(inner=inner)
    with use_kernel_mapping(_mapping(kernel_repo, forward)), torch.set_grad_enabled(grad):
        out = torch.compile(model, backend=backend)(x)
    torch.testing.assert_close(out, expected)
    (decision,) = backend.report.decisions
    assert decision.rejected.reason is Reason.WRONG_OUTPUT and says in decision.rejected.detail


def test_dynamic_shapes_compare_symbolically(kernel_repo):
    model = nn.Sequential(Scale(8))
    backend = kernel_fx.HubKernelsBackend(inner="eager")
    with use_kernel_mapping(_mapping(kernel_repo, WRONG_SHAPE)), torch.no_grad():
        compiled = torch.compile(model, backend=backend, dynamic=True)
        for n in (2, 3, 5):
            torch.testing.assert_close(compiled(torch.ones(n, 8)), model(torch.ones(n, 8)))
    assert {d.rejected.reason for d in backend.report.decisions} == {Reason.WRONG_OUTPUT}


def test_right_output_is_substituted(kernel_repo):
    backend = kernel_fx.HubKernelsBackend(inner="eager")
    with use_kernel_mapping(_mapping(kernel_repo, RIGHT)), torch.no_grad():
        torch.compile(nn.Sequential(Scale(8)), backend=backend)(torch.randn(2, 8))
    assert backend.report.summary() == "1 site: 1 kernel, 0 original"


def test_use_fallback_false_raises(kernel_repo):
    backend = kernel_fx.HubKernelsBackend(inner="eager", use_fallback=False)
    with use_kernel_mapping(_mapping(kernel_repo, WRONG_SHAPE)), torch.no_grad(), pytest.raises(Exception) as info:
        torch.compile(nn.Sequential(Scale(8)), backend=backend)(torch.randn(2, 8))
    assert "wrong output" in str(info.value)
    assert isinstance(info.value, KernelizeError) or isinstance(info.value.__cause__, KernelizeError) or "KernelizeError" in str(info.value)
