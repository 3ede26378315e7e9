"""Verified substitution, compiled: `options={"verify": True}` measures each distinct call's kernel
against the original forward (float64) on the real inputs and keeps it only within tolerance."""

from __future__ import annotations

import pytest
import torch
from helpers_compile import INNERS
from models import Scale, scale_source
from torch import nn

import kernel_fx
from kernel_fx import LocalLayerRepository, Reason, use_kernel_mapping
from kernel_fx.compile.options import BackendOptionError

RIGHT = "return torch.mul(x, self.weight * self.factor)"
OFF = "return x * self.weight * self.factor * 1.001"  # 0.1 % off


def _mapping(kernel_repo, forward):
    repo = kernel_repo({"torch-cpu": {"layers.py": scale_source(forward=forward)}})
    return {"Scale": {"cpu": LocalLayerRepository(repo, layer_name="Scale")}}


def _model():
    return nn.Sequential(Scale(8), nn.Tanh(), Scale(8), Scale(8))


@pytest.mark.parametrize("inner", INNERS)
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_numerically_different_kernel_keeps_the_original(kernel_repo, inner, grad):
    model = _model()
    x = torch.randn(4, 8, requires_grad=grad)
    expected = model(x)
    backend = kernel_fx.HubKernelsBackend(inner=inner, verify=True)
    with use_kernel_mapping(_mapping(kernel_repo, OFF)), torch.set_grad_enabled(grad):
        out = torch.compile(model, backend=backend)(x)
    torch.testing.assert_close(out, expected)
    decisions = backend.report.decisions
    assert len(decisions) == 3 and all(d.rejected.reason is Reason.NUMERICALLY_DIFFERENT for d in decisions)
    assert all(d.measured is not None and not d.measured.within for d in decisions)
    assert "vs original in float64" in decisions[0].rejected.detail
    assert "error (verify)" in backend.report.table()


@pytest.mark.parametrize("verify", [True, {"float32": (1e-5, 1e-5)}], ids=["True", "dict"])
def test_close_kernel_is_kept_with_figures(kernel_repo, verify):
    model = _model()
    x = torch.randn(4, 8)
    backend = kernel_fx.HubKernelsBackend(inner="eager", verify=verify)
    with use_kernel_mapping(_mapping(kernel_repo, RIGHT)), torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend=backend)(x), model(x))
    decisions = backend.report.decisions
    assert backend.report.summary() == "3 sites: 3 kernel, 0 original"
    assert all(d.measured.within and d.measured.reference == "float64" for d in decisions)
    assert decisions[0].measured.inputs == "float32[4, 8]"


def test_string_backend_option(kernel_repo):
    model = _model()
    with use_kernel_mapping(_mapping(kernel_repo, OFF)), torch.no_grad():
        torch.compile(model, backend="hubkernels", options={"inner": "eager", "verify": True})(torch.randn(4, 8))
    report = kernel_fx.last_compile_report()
    assert "numerically different: 3" in report.summary()


def test_loose_tolerance_keeps_the_kernel(kernel_repo):
    backend = kernel_fx.HubKernelsBackend(inner="eager", verify={torch.float32: (1e-2, 1e-2)})
    with use_kernel_mapping(_mapping(kernel_repo, OFF)), torch.no_grad():
        torch.compile(_model(), backend=backend)(torch.randn(4, 8))
    assert backend.report.summary() == "3 sites: 3 kernel, 0 original"


def test_without_verify_nothing_is_measured(kernel_repo):
    backend = kernel_fx.HubKernelsBackend(inner="eager")
    with use_kernel_mapping(_mapping(kernel_repo, OFF)), torch.no_grad():
        torch.compile(_model(), backend=backend)(torch.randn(4, 8))
    assert all(d.uses_kernel and d.measured is None for d in backend.report.decisions)


def test_bad_option():
    with pytest.raises(BackendOptionError, match="verify='yes'"):
        kernel_fx.HubKernelsBackend(verify="yes")
