"""Verified substitution, eagerly: `kernelize(..., verify=True)` runs the original beside the kernel on
the first call of each input signature (float64 where it can) and keeps the kernel only within
the tolerance, with the measured error in the report."""

from __future__ import annotations

import pytest
import torch
from models import Scale, scale_source
from torch import nn

import kernel_fx
from kernel_fx import KernelizeError, LocalLayerRepository, Reason, Verify, kernelize, use_kernel_mapping
from kernel_fx.errors import KernelFallbackWarning, MappingError

RIGHT = "return torch.mul(x, self.weight * self.factor)"
OFF = "return x * self.weight * self.factor * 1.001"  # 0.1 % off: far outside float32's tolerance


def _kernelized(kernel_repo, forward, **kwargs):
    repo = kernel_repo({"torch-cpu": {"layers.py": scale_source(forward=forward)}})
    model = nn.Sequential(Scale(8))
    with use_kernel_mapping({"Scale": {"cpu": LocalLayerRepository(repo, layer_name="Scale")}}):
        kernelize(model, device="cpu", mode=kernel_fx.Mode.INFERENCE, **kwargs)
    return model


def test_a_close_kernel_is_kept_with_its_error(kernel_repo):
    model = _kernelized(kernel_repo, RIGHT, verify=True)
    x = torch.randn(4, 8)
    torch.testing.assert_close(model(x), Scale(8)(x))
    (decision,) = kernel_fx.report(model).decisions
    assert decision.uses_kernel and decision.measured.within
    assert decision.measured.reference == "float64" and decision.measured.inputs == "float32[4, 8]"
    assert decision.measured.max_abs < 1e-5
    assert "error (verify)" in kernel_fx.report(model).table()


def test_a_numerically_different_kernel_falls_back(kernel_repo):
    model = _kernelized(kernel_repo, OFF, verify=True)
    x = torch.randn(4, 8)
    with pytest.warns(KernelFallbackWarning, match="numerically different"):
        out = model(x)
    torch.testing.assert_close(out, Scale(8)(x), rtol=0, atol=0)  # the original's answer, exactly
    (decision,) = kernel_fx.report(model).decisions
    assert decision.rejected.reason is Reason.NUMERICALLY_DIFFERENT
    assert not decision.measured.within and decision.measured.worst > 1
    assert "max |err|" in decision.rejected.detail and "vs original in float64" in decision.rejected.detail


def test_without_verify_the_kernel_runs(kernel_repo):
    model = _kernelized(kernel_repo, OFF)
    x = torch.randn(4, 8)
    torch.testing.assert_close(model(x), Scale(8)(x) * 1.001)
    assert kernel_fx.report(model).decisions[0].measured is None


@pytest.mark.parametrize("verify", [{torch.float32: (1e-2, 1e-2)}, {"float32": {"rtol": 1e-2, "atol": 1e-2}},
                                    Verify({torch.float32: (1e-2, 1e-2)})], ids=["dict", "names", "Verify"])
def test_tolerances_are_configurable(kernel_repo, verify):
    model = _kernelized(kernel_repo, OFF, verify=verify)
    model(torch.randn(4, 8))
    (decision,) = kernel_fx.report(model).decisions
    assert decision.uses_kernel and decision.measured.rtol == 1e-2


def test_use_fallback_false_raises(kernel_repo):
    model = _kernelized(kernel_repo, OFF, verify=True, use_fallback=False)
    with pytest.raises(KernelizeError, match="numerically different"):
        model(torch.randn(4, 8))


def test_each_signature_once(kernel_repo):
    model = _kernelized(kernel_repo, RIGHT, verify=True)
    for _ in range(3):
        model(torch.randn(4, 8))
        model(torch.randn(2, 8).double())  # float64 inputs: a second signature
    assert [d.measured.inputs for d in kernel_fx.report(model).decisions] == ["float32[4, 8]", "float64[2, 8]"]


def test_bfloat16_has_its_own_tolerance(kernel_repo):
    model = _kernelized(kernel_repo, RIGHT, verify=True)
    model.to(torch.bfloat16)
    model(torch.randn(4, 8, dtype=torch.bfloat16))
    (decision,) = kernel_fx.report(model).decisions
    assert decision.uses_kernel and decision.measured.rtol == 1.6e-2


@pytest.mark.parametrize("value", ["yes", 1, {torch.float32: 1e-3}, {"float33": (1, 1)}], ids=["str", "int", "one-number", "bad-dtype"])
def test_bad_verify_value(value):
    with pytest.raises(MappingError, match="verify"):
        kernelize(nn.Sequential(Scale(8)), device="cpu", verify=value)
