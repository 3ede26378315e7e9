"""Issue 14 finding 6, eagerly: with `check_outputs=True` a kernel whose output is shaped unlike the
original's (shape, dtype, structure) is set aside on its first call per input signature, with
reason "wrong output". By default (issue 19) a call a kernel serves never runs the original."""

from __future__ import annotations

import pytest
import torch
from models import Scale, scale_source
from torch import nn

import kernel_fx
from kernel_fx import KernelizeError, LocalLayerRepository, Reason, kernelize, use_kernel_mapping
from kernel_fx.errors import KernelFallbackWarning

WRONG_SHAPE = "return (x * self.weight * self.factor)[:1]"  # (1, 8) for (2, 8)
WRONG_DTYPE = "return (x * self.weight * self.factor).double()"
WRONG_STRUCTURE = "return x * self.weight * self.factor, x"
RIGHT = "return torch.mul(x, self.weight * self.factor)"


def _kernelized(kernel_repo, forward, **kwargs):
    kwargs.setdefault("check_outputs", True)
    repo = kernel_repo({"torch-cpu": {"layers.py": scale_source(forward=forward)}})
    model = nn.Sequential(Scale(8))
    with use_kernel_mapping({"Scale": {"cpu": LocalLayerRepository(repo, layer_name="Scale")}}):
        kernelize(model, device="cpu", **kwargs)
    return model


@pytest.mark.parametrize(("forward", "says"), [
    (WRONG_SHAPE, "output 0 has shape (1, 8), the original (2, 8)"),
    (WRONG_DTYPE, "output 0 has dtype torch.float64, the original torch.float32"),
    (WRONG_STRUCTURE, "the kernel returned a tuple of 2, the original a tensor"),
], ids=["shape", "dtype", "structure"])
def test_wrong_output_falls_back_with_a_reason(kernel_repo, forward, says):
    model = _kernelized(kernel_repo, forward)
    x = torch.randn(2, 8)
    expected = Scale(8)(x)
    with pytest.warns(KernelFallbackWarning, match="wrong output"):
        out = model(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(model(x), expected)  # later calls: the original, without another warning
    (decision,) = [d for d in kernel_fx.report(model).decisions if d.rejected is not None]
    assert decision.rejected.reason is Reason.WRONG_OUTPUT
    assert says in decision.rejected.detail and "float32[2, 8]" in decision.rejected.detail
    assert "wrong output" in kernel_fx.report(model).summary()


def test_right_output_keeps_the_kernel(kernel_repo):
    model = _kernelized(kernel_repo, RIGHT)
    x = torch.randn(2, 8)
    torch.testing.assert_close(model(x), Scale(8)(x))
    assert kernel_fx.report(model).summary() == "1 site: 1 kernel, 0 original"


def test_checked_once_per_input_signature(kernel_repo):
    model = _kernelized(kernel_repo, "return (x * self.weight * self.factor)[:1] if x.shape[0] == 3 else x * self.weight * self.factor")
    torch.testing.assert_close(model(torch.ones(2, 8)), Scale(8)(torch.ones(2, 8)))
    with pytest.warns(KernelFallbackWarning):
        torch.testing.assert_close(model(torch.ones(3, 8)), Scale(8)(torch.ones(3, 8)))
    forward = model[0].forward
    assert len(forward.findings) == 2  # one per signature, each checked once
    model(torch.ones(2, 8))
    model(torch.ones(3, 8))
    assert len(forward.findings) == 2
    outcomes = sorted(d.outcome.value for d in kernel_fx.report(model).decisions)
    assert outcomes == ["kernel", "original"]


def test_use_fallback_false_raises_on_the_call(kernel_repo):
    model = _kernelized(kernel_repo, WRONG_SHAPE, use_fallback=False)
    with pytest.raises(KernelizeError, match="wrong output: for inputs float32\\[2, 8\\]"):
        model(torch.randn(2, 8))


@kernel_fx.use_kernel_forward_from_hub("Counted")
class Counted(nn.Module):
    """Writes a buffer and its input in place: the checks must not write them again."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x, acc):
        self.calls += 1
        acc.add_(x)
        return x * 2


COUNTED = '''
from torch import nn
class Counted(nn.Module):
    def forward(self, x, acc):
        self.calls += 1
        acc.add_(x)
        return x + x
'''


@pytest.mark.parametrize("verify", [False, True], ids=["check", "verify"])
def test_the_checks_write_nothing(kernel_repo, verify):
    repo = kernel_repo({"torch-cpu": {"layers.py": COUNTED}})
    model = nn.Sequential(Counted())
    with use_kernel_mapping({"Counted": {"cpu": LocalLayerRepository(repo, layer_name="Counted")}}):
        kernelize(model, device="cpu", verify=verify, check_outputs=True)
    acc = torch.zeros(3)
    out = model[0](torch.ones(3), acc)
    assert model[0].calls.item() == 1 and acc.tolist() == [1.0, 1.0, 1.0]
    assert out.tolist() == [2.0, 2.0, 2.0]
    assert all(d.rejected is None for d in kernel_fx.report(model).decisions if d.mode == "INFERENCE")


CALLS = {"original": 0}  # a module-level counter: no copy of the module can hide a call


@kernel_fx.use_kernel_forward_from_hub("Scale")
class CountingScale(Scale):
    """Scale whose original forward counts its calls, on the instance and in a global."""

    def __init__(self, width: int) -> None:
        super().__init__(width)
        self.n_calls = 0

    def forward(self, x):
        self.n_calls += 1
        CALLS["original"] += 1
        return super().forward(x)


@pytest.mark.parametrize("mode", [None, kernel_fx.Mode.INFERENCE], ids=["per-call", "inference"])
def test_by_default_the_original_never_runs_on_a_call_its_kernel_serves(kernel_repo, mode):
    repo = kernel_repo({"torch-cpu": {"layers.py": scale_source(forward=RIGHT)}})
    model = nn.Sequential(CountingScale(8))
    with use_kernel_mapping({"Scale": {"cpu": LocalLayerRepository(repo, layer_name="Scale")}}):
        kernelize(model, device="cpu", mode=mode)
    before = CALLS["original"]
    with torch.no_grad():
        for batch in (2, 3, 2):  # new input signatures too
            model(torch.randn(batch, 8))
    assert model[0].n_calls == 0 and CALLS["original"] == before
    assert kernel_fx.report(model).summary() == "1 site: 1 kernel, 0 original"


def test_without_check_outputs_a_wrong_kernel_runs_eagerly(kernel_repo):
    """The documented trade-off: the eager comparison is opt-in (the compiled paths always check)."""
    model = _kernelized(kernel_repo, WRONG_SHAPE, check_outputs=False)
    assert model(torch.randn(2, 8)).shape == (1, 8)
