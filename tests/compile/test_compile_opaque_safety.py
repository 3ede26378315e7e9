"""Opaque kernels (issue 14, findings 1-4): what an opaque op cannot express is refused with a
typed reason, what it can (a written input) is declared, side effects run once, and a kernel the
fake implementation cannot run keeps the model compiling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kernel_fx
from kernel_fx import HubKernelsBackend, Outcome, Reason, use_kernel_mapping

TOL = dict(rtol=1e-5, atol=1e-5)


@kernel_fx.use_kernel_forward_from_hub("AddRMS")
class AddRMS(nn.Module):
    """Residual add then RMS norm; returns (normed, new residual)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, width))
        self.eps = 1e-6

    def forward(self, x, residual):
        r = x + residual
        return r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight, r


# The fused kernel of serving stacks: writes the sum into `residual` and returns it. Nothing
# declares the write (a kernel layer has only forward and its flags): the pass finds it.
FUSED_ADD_RMS = '''
import torch
from torch import nn

class AddRMS(nn.Module):
    can_torch_compile = False

    def forward(self, x, residual):
        residual.add_(x)
        return residual * torch.rsqrt(residual.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight, residual
'''


class FusedBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.norm = AddRMS()

    def forward(self, x):
        residual = self.proj(x)  # a buffer of its own (inductor does not recompute a matmul)
        before = residual * 3.0  # read before the kernel writes `residual`: inductor may fuse it later
        out, residual = self.norm(torch.sin(x), residual)
        out2, residual = self.norm(torch.cos(out), residual)
        return out2 + residual + before


@pytest.mark.parametrize("inner", ["eager", "aot_eager", "inductor"])
def test_finding1_kernel_writing_an_input_is_declared(inner, mapping):
    """Undeclared, inductor fused a read of `residual` after the kernel's write (off by 3)."""
    kernels = mapping(AddRMS=FUSED_ADD_RMS)
    model = FusedBlock().eval()
    x = torch.randn(4, 8)
    backend = HubKernelsBackend(inner=inner)
    with use_kernel_mapping(kernels), torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(torch.compile(model, backend=backend)(x), expected, **TOL)
    assert {d.outcome for d in backend.report.decisions} == {Outcome.OPAQUE_KERNEL}


@kernel_fx.use_kernel_forward_from_hub("Head")
class Head(nn.Module):
    """The first half of the features (a view in the original too)."""

    def forward(self, x):
        return x[..., :4]


HEAD_VIEW = '''
import torch
from torch import nn

class Head(nn.Module):
    can_torch_compile = False

    def forward(self, x):
        return torch.narrow(x, -1, 0, 4)
'''


class WritesThroughView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = Head()

    def forward(self, x):
        h = x * 1.5
        self.head(h).mul_(3.0)  # the caller writes through the view into h
        return h.sum(-1)


@pytest.mark.parametrize("inner", ["eager", "aot_eager"])
def test_finding2_kernel_returning_a_view_the_caller_writes_falls_back(inner, mapping):
    model = WritesThroughView().eval()
    x = torch.randn(3, 8)
    backend = HubKernelsBackend(inner=inner)
    with use_kernel_mapping(mapping(Head=HEAD_VIEW)), torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend=backend)(x), model(x), **TOL)
    decision, = backend.report.decisions
    assert decision.outcome is Outcome.ORIGINAL and decision.rejected.reason is Reason.OPAQUE_ALIASING


@kernel_fx.use_kernel_forward_from_hub("Counted")
class Counted(nn.Module):
    """Scale by a weight; the kernel also counts its calls in a buffer the original never reads."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, width))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("ema", torch.zeros(width))

    def forward(self, x):
        return x * self.weight


COUNTING = '''
import torch
from torch import nn

class Counted(nn.Module):
    can_torch_compile = False

    def forward(self, x):
        self.steps += 1
        return torch.mul(x, self.weight)
'''

EMA = '''
import torch
from torch import nn

class Counted(nn.Module):
    can_torch_compile = False

    def forward(self, x):
        self.ema.mul_(0.5).add_(x.detach().mean(0))
        return torch.mul(x, self.weight)
'''


@pytest.mark.parametrize("inner", ["eager", "aot_eager"])
def test_finding3_step_counter_counts_each_training_step_once(inner, mapping):
    model = nn.Sequential(nn.Linear(8, 8), Counted()).train()
    x = torch.randn(4, 8)
    backend = HubKernelsBackend(inner=inner)
    with use_kernel_mapping(mapping(Counted=COUNTING)):
        compiled = torch.compile(model, backend=backend)
        for _ in range(3):
            compiled(x).square().sum().backward()
    assert int(model[1].steps) in (0, 3)  # 3 with the kernel, 0 with the original; never 6
    decision, = backend.report.decisions
    assert decision.outcome is Outcome.ORIGINAL and decision.rejected.reason is Reason.OPAQUE_SIDE_EFFECT


@pytest.mark.parametrize("inner", ["eager", "aot_eager"])
def test_finding3_float_buffer_updated_in_training_does_not_crash(inner, mapping):
    model = nn.Sequential(nn.Linear(8, 8), Counted()).train()
    reference = nn.Sequential(nn.Linear(8, 8), Counted()).train()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(4, 8)
    backend = HubKernelsBackend(inner=inner)
    with use_kernel_mapping(mapping(Counted=EMA)):
        torch.compile(model, backend=backend)(x).square().sum().backward()
    reference(x).square().sum().backward()
    for got, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got.grad, want.grad, **TOL)
    decision, = backend.report.decisions
    assert decision.outcome is Outcome.ORIGINAL and decision.rejected.reason is Reason.OPAQUE_SIDE_EFFECT


def test_finding3_step_counter_in_inference_counts_once_per_call(mapping):
    model = nn.Sequential(nn.Linear(8, 8), Counted()).eval()
    x = torch.randn(4, 8)
    backend = HubKernelsBackend(inner="aot_eager")
    with use_kernel_mapping(mapping(Counted=COUNTING)), torch.no_grad():
        compiled = torch.compile(model, backend=backend)
        for _ in range(3):
            torch.testing.assert_close(compiled(x), model(x), **TOL)
    decision, = backend.report.decisions
    # each compiled call ran the kernel once, and compiling ran it on no real state
    assert int(model[1].steps) == (3 if decision.uses_kernel else 0)
    assert decision.outcome is Outcome.OPAQUE_KERNEL or decision.rejected is not None


@kernel_fx.use_kernel_forward_from_hub("Table")
class Table(nn.Module):
    """Adds a row of a plain (unregistered) tensor attribute."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.table = torch.linspace(-1.0, 1.0, width)  # not a parameter, not a buffer

    def forward(self, x):
        return x + self.table


TABLE_KERNEL = '''
import torch
from torch import nn

class Table(nn.Module):
    can_torch_compile = {can}

    def forward(self, x):
        return torch.add(self.table, x)
'''


@pytest.mark.parametrize("can", [True, False])
@pytest.mark.parametrize("inner", ["eager", "aot_eager", "inductor"])
def test_finding4_kernel_reading_a_plain_tensor_attribute(can, inner, mapping):
    model = nn.Sequential(nn.Linear(8, 8), Table()).eval()
    x = torch.randn(2, 8)
    backend = HubKernelsBackend(inner=inner)
    with use_kernel_mapping(mapping(Table=TABLE_KERNEL.format(can=can))), torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend=backend)(x), model(x), **TOL)
    decision, = backend.report.decisions
    assert decision.uses_kernel or decision.rejected is not None


@kernel_fx.use_kernel_forward_from_hub("Tally")
class Tally(nn.Module):
    """Counts its calls in a buffer and reads the count back into its output (issue 19)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, 8))
        self.register_buffer("count", torch.zeros(()))

    def forward(self, x):
        self.count.add_(1)
        return self.count.expand_as(x) + x * self.weight


# addcmul has no meta for an expand to symbolic sizes: the kernel cannot be traced, nor run on the
# symbolic fakes, under dynamic shapes; its write to `count` must still be declared.
TALLY = '''
import torch
from torch import nn

class Tally(nn.Module):
    can_torch_compile = True

    def forward(self, x):
        self.count.add_(1)
        return torch.addcmul(self.count.expand_as(x), x, self.weight)
'''


@pytest.mark.parametrize("inner", ["eager", "aot_eager"])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_a_buffer_written_and_read_back_counts_every_call(kernel_repo, inner, dynamic, training):
    repo = kernel_fx.LocalLayerRepository(kernel_repo({"torch-cpu": {"layers.py": TALLY}}), layer_name="Tally")
    eager, compiled = nn.Sequential(Tally()).train(training), nn.Sequential(Tally()).train(training)
    with use_kernel_mapping({"Tally": {"cpu": repo}}):
        run = torch.compile(compiled, backend=HubKernelsBackend(inner=inner), dynamic=dynamic or None)
        for batch in (2, 4, 3):  # the second shape recompiles with symbolic sizes
            x = torch.randn(batch, 8, requires_grad=training)
            got, want = run(x), eager(x)
            torch.testing.assert_close(got, want, **TOL)
            if training:
                got.sum().backward()  # never "a leaf Variable that requires grad is being used in an in-place operation"
                want.sum().backward()
    assert compiled[0].count.item() == eager[0].count.item() == 3
