"""`autotune=True`: each distinct call timed with its kernel against its original region; the
kernel stays only where it is faster, and the timings go into the report."""

from __future__ import annotations

import json
import re

import pytest
import torch
from helpers_compile import INNERS
from models import Scale, slow_scale
from torch import nn

import kernel_fx
from kernel_fx import HubKernelsBackend, Outcome, Reason, use_kernel_mapping
from kernel_fx.compile import autotune
from kernel_fx.compile.options import BackendOptionError


@kernel_fx.use_kernel_forward_from_hub("Relu50")
class Relu50(nn.Module):
    """relu, fifty times over: fifty graph nodes, slow to run one by one."""

    def forward(self, x):
        for _ in range(50):
            x = torch.relu(x)
        return x


ONE_RELU = '''
import torch
from torch import nn

class Relu50(nn.Module):
    has_backward = True
    can_torch_compile = True

    def forward(self, x):
        return torch.relu(x)
'''

class FourCalls(nn.Module):
    """Three calls on one shape, one on another."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.d = Relu50(), Relu50(), Relu50(), Relu50()

    def forward(self, x):
        return self.c(self.b(self.a(x))), self.d(x[:, :16])


@pytest.mark.parametrize("inner", INNERS)
def test_slower_kernel_keeps_the_original(inner, mapping):
    model = nn.Sequential(nn.Linear(8, 8), Scale()).eval()
    x = torch.randn(64, 8)
    # use_fallback=False: being slower is a choice, not a failure
    backend = HubKernelsBackend(inner=inner, autotune=True, use_fallback=False)
    with use_kernel_mapping(mapping(Scale=slow_scale())), torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend=backend)(x), model(x))
    decision, = backend.report.decisions
    assert decision.outcome is Outcome.ORIGINAL and decision.rejected.reason is Reason.SLOWER_THAN_ORIGINAL
    assert re.fullmatch(rf"kernel [\d.e-]+ ms vs original [\d.e-]+ ms \({inner}\)", decision.rejected.detail)
    record, = backend.records
    result, = record.autotune
    assert (result.kernel, result.shapes, result.timed, result.kept, result.sites) == (
        "Scale", "float32[64, 8]", "forward", False, ("1 #0",))
    assert result.kernel_ms > result.original_ms
    assert record.after.ops == record.before.ops and not record.site_diffs  # nothing substituted


def test_faster_kernel_is_kept(mapping):
    model = nn.Sequential(Relu50()).eval()
    x = torch.randn(64, 64)
    backend = HubKernelsBackend(inner="eager", autotune=True)
    with use_kernel_mapping(mapping(Relu50=ONE_RELU)), torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend=backend)(x), model(x))
    decision, = backend.report.decisions
    assert decision.outcome is Outcome.KERNEL and decision.rejected is None
    result, = backend.records[0].autotune
    assert result.kept and result.speedup > 1 / autotune.MARGIN
    assert backend.records[0].after.ops == {"aten.relu.default": 1}


def test_identical_calls_are_timed_once(mapping, monkeypatch):
    compiled, kept_alive = [], []

    def inner(gm, example_inputs):
        compiled.append(len(example_inputs))
        return gm.forward

    def run_graph(gm, example_inputs, needed):
        kept_alive.extend(n.name for n in needed)
        return run(gm, example_inputs, needed)

    run = autotune.run_graph
    monkeypatch.setattr(autotune, "run_graph", run_graph)

    backend = HubKernelsBackend(inner=inner, autotune=True)
    with use_kernel_mapping(mapping(Relu50=ONE_RELU)), torch.no_grad():
        torch.compile(FourCalls().eval(), backend=backend)(torch.randn(32, 64))
    record, = backend.records
    assert [(r.shapes, r.sites) for r in record.autotune] == [
        ("float32[32, 64]", ("a #0", "b #0", "c #0")), ("float32[32, 16]", ("d #0",))]
    assert len(compiled) == 2 * 2 + 1  # original and kernel per distinct call, then the graph
    assert len(kept_alive) == 2  # the inputs of a and d: b and c are timed on a's
    assert all(d.outcome is Outcome.KERNEL for d in record.decisions)


def test_training_times_forward_and_backward(mapping):
    model = nn.Sequential(nn.Linear(16, 16), Relu50()).train()
    x = torch.randn(32, 16)
    backend = HubKernelsBackend(inner="aot_eager", autotune=True)
    with use_kernel_mapping(mapping(Relu50=ONE_RELU)):
        torch.compile(model, backend=backend)(x).square().sum().backward()
        got = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        model(x).square().sum().backward()
    for a, b in zip(got, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b)
    result, = backend.records[0].autotune
    assert result.timed == "forward+backward" and result.kept
    assert backend.report.decisions[0].outcome is Outcome.KERNEL


def test_opaque_kernel_slower_than_inductor(mapping):
    model = nn.Sequential(Scale()).eval()
    x = torch.randn(64, 8)
    backend = HubKernelsBackend(inner="inductor", autotune=True)
    with use_kernel_mapping(mapping(Scale=slow_scale(can_compile=False))), torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend=backend)(x), model(x))
    decision, = backend.report.decisions
    assert decision.rejected.reason is Reason.SLOWER_THAN_ORIGINAL and decision.rejected.detail.endswith("(inductor)")
    assert "kernel_fx.opaque_kernel.default" not in backend.records[0].after.ops


def test_graph_inputs_and_random_streams_are_left_alone(mapping):
    class Counted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = Scale()
            self.register_buffer("steps", torch.zeros((), dtype=torch.long))

        def forward(self, x):
            self.steps.add_(1)  # the graph writes to a buffer: the timing run must not
            return self.scale(x) + torch.rand_like(x)

    outputs = []
    for tune in (False, True):
        torch._dynamo.reset()
        model = Counted().eval()
        torch.manual_seed(1)
        with use_kernel_mapping(mapping(Scale=slow_scale())), torch.no_grad():
            outputs.append(torch.compile(model, backend=HubKernelsBackend(inner="eager", autotune=tune))(torch.ones(4, 8)))
        assert model.steps.item() == 1
    torch.testing.assert_close(outputs[0], outputs[1])  # the same random numbers: none were drawn


@pytest.mark.parametrize("options, message", [
    ({"autotune": "yes"}, r"hubkernels option autotune='yes' must be True or False\."),
    ({"autotun": True}, r"Unknown hubkernels option 'autotun'\. Known options are: autotune, checks, device, inner, mode, use_fallback, verify\."),
], ids=["value", "name"])
def test_the_option_is_validated(options, message):
    with pytest.raises(BackendOptionError, match=message):
        HubKernelsBackend().options.updated(options)
    if "autotune" in options:
        with pytest.raises(BackendOptionError, match=message):
            HubKernelsBackend(**options)


def test_report_renders_the_timings(mapping):
    model = nn.Sequential(Relu50(), Scale()).eval()
    with use_kernel_mapping(mapping(Relu50=ONE_RELU, Scale=slow_scale())), torch.no_grad():
        torch.compile(model, backend="hubkernels", options={"inner": "eager", "autotune": True})(torch.randn(64, 8))
    report = kernel_fx.last_compile_report()
    assert report.summary() == "2 sites: 1 kernel, 1 original (slower than original: 1)"
    text = report.render()
    assert "autotune: medians, both compiled by eager" in text
    header = next(line for line in text.splitlines() if line.startswith("kernel "))
    assert header.split() == ["kernel", "inputs", "timed", "kernel", "ms", "original", "ms", "speedup", "runs", "sites"]
    relu_row = next(line for line in text.splitlines() if line.startswith("Relu50 "))
    assert relu_row.split()[-3:] == ["kernel", "0", "#0"] and "float32[64, 8]" in relu_row
    assert "| Scale " in report.render("markdown")
    graph, = json.loads(report.to_json())["graphs"]
    assert [(r["kernel"], r["kept"], r["sites"]) for r in graph["autotune"]] == [("Relu50", True, ["0 #0"]), ("Scale", False, ["1 #0"])]
    assert all(isinstance(r["kernel_ms"], float) and isinstance(r["original_ms"], float) for r in graph["autotune"])


def test_without_the_option_nothing_is_timed(mapping, monkeypatch):
    monkeypatch.setattr(autotune, "_race", lambda *a: pytest.fail("timed without autotune=True"))
    backend = HubKernelsBackend(inner="eager")
    with use_kernel_mapping(mapping(Scale=slow_scale())), torch.no_grad():
        torch.compile(nn.Sequential(Scale()).eval(), backend=backend)(torch.randn(4, 8))
    record, = backend.records
    assert record.autotune == [] and record.autotune_note is None and "autotune" not in backend.report.render()
    assert backend.report.decisions[0].outcome is Outcome.KERNEL


def test_what_cannot_be_timed_keeps_its_kernel_with_a_note(mapping, monkeypatch):
    def broken(*args):
        raise RuntimeError("no timer")

    monkeypatch.setattr(autotune, "_race", broken)
    backend = HubKernelsBackend(inner="eager", autotune=True)
    with use_kernel_mapping(mapping(Scale=slow_scale())), torch.no_grad():
        torch.compile(nn.Sequential(Scale()).eval(), backend=backend)(torch.randn(4, 8))
        result, = backend.records[0].autotune
        assert result.kept and result.kernel_ms is None and result.note == "not timed (RuntimeError: no timer)"
        assert "not timed (RuntimeError: no timer)" in backend.report.render()

        monkeypatch.setattr(autotune, "run_graph", broken)
        torch._dynamo.reset()
        torch.compile(nn.Sequential(Scale()).eval(), backend=backend)(torch.randn(4, 8))
    second = backend.records[1]
    assert second.autotune == [] and second.autotune_note.endswith("failed (RuntimeError: no timer)")
    assert "autotune: not timed: running the graph" in backend.report.render()
    assert [d.outcome for d in backend.report.decisions] == [Outcome.KERNEL, Outcome.KERNEL]
