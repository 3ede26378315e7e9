"""Issue 14 finding 5: a subclass that overrides a marked forward keeps its own forward on every path
(it inherits the layer name, but computes something else), unless it is marked itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kernel_fx
from kernel_fx import LocalLayerRepository, Reason, kernelize, use_kernel_mapping

DOUBLE = '''
from torch import nn
class Double(nn.Module):
    can_torch_compile = True

    def forward(self, x):
        return x * 2
'''


@kernel_fx.use_kernel_forward_from_hub("Double")
class Double(nn.Module):
    def forward(self, x):
        return x + x


class Triple(Double):
    """Inherits the name "Double" but is not a doubling."""

    def forward(self, x):
        return 3 * x


class CallsParent(Double):
    """Overrides forward and calls the marked one inside: still its own forward."""

    def forward(self, x):
        return super().forward(x) + 1


@kernel_fx.use_kernel_forward_from_hub("Double")
class MarkedTriple(Double):
    """Marked itself: a kernel mapped under its name replaces its forward."""

    def forward(self, x):
        return x * 2


class PlainSub(Double):
    """No forward of its own: it is a Double."""


@pytest.fixture
def mapping(kernel_repo):
    repo = kernel_repo({"torch-cpu": {"layers.py": DOUBLE}})
    return {"Double": {"cpu": LocalLayerRepository(repo, layer_name="Double")}}


def _model():
    return nn.Sequential(Triple(), CallsParent(), PlainSub(), MarkedTriple())


def _decisions(report):
    """The first decision of each site (eager sites have one per condition group; here all agree)."""
    found = {}
    for d in report.decisions:
        found.setdefault(d.path, d)
    return found


def test_eager_subclass_keeps_its_forward(mapping):
    model = _model()
    x = torch.ones(2, 3)
    expected = model(x)
    with use_kernel_mapping(mapping):
        kernelize(model, device="cpu")
    torch.testing.assert_close(model(x), expected)
    decisions = _decisions(kernel_fx.report(model))
    assert decisions["0"].rejected.reason is Reason.OVERRIDES_FORWARD
    assert "Triple overrides the forward of Double" in decisions["0"].rejected.detail
    assert decisions["1"].rejected.reason is Reason.OVERRIDES_FORWARD
    assert decisions["2"].uses_kernel and decisions["3"].uses_kernel


def test_use_fallback_false_does_not_raise_for_an_override(mapping):
    with use_kernel_mapping(mapping):
        kernelize(nn.Sequential(Triple()), device="cpu", use_fallback=False)


@pytest.mark.parametrize("inner", ["eager", "aot_eager"])
def test_compiled_subclass_keeps_its_forward(mapping, inner):
    model = _model()
    x = torch.ones(2, 3)
    expected = model(x)
    backend = kernel_fx.HubKernelsBackend(inner=inner)
    with use_kernel_mapping(mapping), torch.no_grad():
        out = torch.compile(model, backend=backend)(x)
    torch.testing.assert_close(out, expected)
    decisions = _decisions(backend.report)
    assert decisions["0"].rejected.reason is Reason.OVERRIDES_FORWARD
    assert not decisions["1"].uses_kernel
    assert decisions["2"].uses_kernel and decisions["3"].uses_kernel


def test_eager_and_compiled_reports_agree(mapping):
    with use_kernel_mapping(mapping):
        explained = kernel_fx.explain(_model(), torch.ones(2, 3), device="cpu")
    eager = {d.path: d.outcome for d in explained.eager.decisions}
    compiled = {d.path: d.outcome for d in explained.compiled.decisions}
    assert eager == compiled
