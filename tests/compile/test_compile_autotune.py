"""`autotune=True`: whole-graph variants — every kernel, no kernel, without each layer name — compiled
by the inner compiler and timed on the real inputs; a layer's kernels stay only where the graph is
faster with them, and every timing and choice goes into the report.

The inductor tests race kernels that differ from the original by well over 3x (a matmul against
the same product spelled as a broadcast and a sum, which inductor turns into a plain reduction
loop), so generous margins hold on a loaded 2-core machine."""

from __future__ import annotations

import json
import re
import statistics
import time

import pytest
import torch
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

N = 192  # (N, N) @ (N, N): a library matmul; the broadcast-and-sum spelling is a plain loop, many times slower


class _Projection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(N, N) / N**0.5)


@kernel_fx.use_kernel_forward_from_hub("Project")
class Project(_Projection):
    """x @ weight, as a matmul. Its kernel (SLOW_PROJECT) does the same the slow way."""

    def forward(self, x):
        return x @ self.weight


@kernel_fx.use_kernel_forward_from_hub("NaiveProject")
class NaiveProject(_Projection):
    """x @ weight, the slow way: (B, N, 1) * (N, N) summed over N. Its kernel (FAST_PROJECT) is a matmul."""

    def forward(self, x):
        return (x.unsqueeze(-1) * self.weight).sum(-2)  # (B, N, N) -> (B, N)


def _projection_kernel(name: str, body: str) -> str:
    return f'''
import torch
from torch import nn

class {name}(nn.Module):
    has_backward = True
    can_torch_compile = True

    def forward(self, x):
        return {body}
'''


SLOW_PROJECT = _projection_kernel("Project", "(x.unsqueeze(-1) * self.weight).sum(-2)")
FAST_PROJECT = _projection_kernel("NaiveProject", "x @ self.weight")
TOLERANCE = {"rtol": 1e-4, "atol": 1e-3}  # the two spellings sum in different orders


@pytest.fixture
def one_thread():
    """Inductor's CPU kernels use as many OpenMP threads as torch did when they were compiled; on a
    loaded 2-core machine a parallel region waits milliseconds for a busy core, which drowns the
    differences raced here. One thread times the code, not the scheduler."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _median_ms(fns, x, rounds=15, reps=5):
    """Median milliseconds of each of `fns` on `x`, over rounds that alternate between them."""
    samples = [[] for _ in fns]
    for _ in range(rounds):
        for fn, found in zip(fns, samples):
            for _ in range(reps):
                start = time.perf_counter()
                fn(x)
                found.append(time.perf_counter() - start)
    return [statistics.median(found) * 1e3 for found in samples]


@pytest.mark.parametrize("layer, kernel, kept", [
    (Project, SLOW_PROJECT, False),
    (NaiveProject, FAST_PROJECT, True),
], ids=["slow-kernel-refused", "fast-kernel-kept"])
def test_whole_graph_decides_and_is_never_slower_than_the_better_opponent(layer, kernel, kept, mapping, one_thread):
    x = torch.randn(N, N)
    model = nn.Sequential(layer(), nn.ReLU()).eval()
    name = layer.__name__
    with use_kernel_mapping(mapping(**{name: kernel})), torch.no_grad():
        expected = model(x)
        compiled = {}
        for label, backend in [("inductor", "inductor"), ("default", HubKernelsBackend(inner="inductor")),
                               ("autotune", HubKernelsBackend(inner="inductor", autotune=True))]:
            torch._dynamo.reset()
            fn = torch.compile(model, backend=backend)
            torch.testing.assert_close(fn(x), expected, **TOLERANCE)
            compiled[label] = (fn, backend)
        inductor_ms, default_ms, tuned_ms = _median_ms([fn for fn, _ in compiled.values()], x)
    backend = compiled["autotune"][1]
    print(f"{name}: inductor {inductor_ms:.3f} ms, default {default_ms:.3f} ms, autotune {tuned_ms:.3f} ms;",
          ", ".join(f"{v.name} {v.ms:.3f} ms (compile {v.compile_s:.2f} s)" for v in backend.records[0].autotune_variants))
    decision, = backend.report.decisions
    record, = backend.records
    every, none = record.autotune_variants
    assert (every.name, every.without, none.name, none.without) == ("every kernel", (), "no kernel", (name,))
    assert every.ms is not None and none.ms is not None and every.compile_s > 0 and none.compile_s > 0
    result, = record.autotune
    assert (result.kernel, result.kept, result.sites, result.timed) == (name, kept, ("0 #0",), "forward")
    figures = dict(decision.figures)["faster_in_graph"]
    assert (figures.with_ms, figures.without_ms, figures.kept) == (every.ms, none.ms, kept)
    if kept:
        assert decision.outcome is Outcome.KERNEL and every.chosen and not none.chosen
        assert none.ms > 1.5 * every.ms  # the kernel is several times faster: a generous margin
    else:
        assert decision.outcome is Outcome.ORIGINAL and decision.rejected.reason is Reason.SLOWER_THAN_ORIGINAL
        assert decision.rejected.check == "faster_in_graph"
        assert re.fullmatch(r"whole graph [\d.e-]+ ms with Project, [\d.e-]+ ms without \(every kernel vs no kernel\): original \(inductor\)",
                            decision.rejected.detail)
        assert none.chosen and not every.chosen and every.ms > 1.5 * none.ms
        assert record.after.ops == record.before.ops and not record.site_diffs  # nothing substituted
    # never slower than the better of inductor alone and the default pass, beyond noise: the worse
    # of the two is several times slower, so a wrong choice could not hide in this margin
    assert tuned_ms <= 1.5 * min(inductor_ms, default_ms), (tuned_ms, inductor_ms, default_ms)
    assert max(inductor_ms, default_ms) > 2 * min(inductor_ms, default_ms), (inductor_ms, default_ms)


def test_each_layer_name_decided_on_its_own_when_the_budget_allows(mapping, monkeypatch, one_thread):
    monkeypatch.setattr(autotune, "COMPILE_BUDGET", 100.0)  # every variant compiled, whatever it costs
    model = nn.Sequential(Project(), NaiveProject()).eval()
    x = torch.randn(N, N)
    backend = HubKernelsBackend(inner="inductor", autotune=True)
    with use_kernel_mapping(mapping(Project=SLOW_PROJECT, NaiveProject=FAST_PROJECT)), torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend=backend)(x), model(x), **TOLERANCE)
    record, = backend.records
    timed = {v.name: v for v in record.autotune_variants}
    assert set(timed) == {"every kernel", "no kernel", "without Project", "without NaiveProject"}
    assert all(v.ms is not None for v in timed.values()) and timed["without Project"].chosen
    assert [(d.layer_name, d.outcome) for d in record.decisions] == [("Project", Outcome.ORIGINAL), ("NaiveProject", Outcome.KERNEL)]
    assert [(r.kernel, r.kept) for r in record.autotune] == [("Project", False), ("NaiveProject", True)]
    # two matmuls beat any variant with one broadcast-and-sum by far
    assert 1.5 * timed["without Project"].ms < min(timed["every kernel"].ms, timed["no kernel"].ms, timed["without NaiveProject"].ms)


def test_compiles_are_bounded_by_the_budget(mapping):
    compiled = []

    def inner(gm, example_inputs):  # every compile takes about as long: the budget then allows two variants
        time.sleep(0.05)
        compiled.append(gm)
        return gm.forward

    model = nn.Sequential(Relu50(), Scale()).eval()
    backend = HubKernelsBackend(inner=inner, autotune=True)
    with use_kernel_mapping(mapping(Relu50=ONE_RELU, Scale=slow_scale())), torch.no_grad():
        torch.compile(model, backend=backend)(torch.randn(64, 8))
    record, = backend.records
    assert [(v.name, v.ms is not None, v.note) for v in record.autotune_variants] == [
        ("every kernel", True, ""), ("no kernel", True, ""),
        ("without Relu50", False, "left out: compile budget"), ("without Scale", False, "left out: compile budget")]
    assert len(compiled) == 3  # two timed variants, then the graph itself: at most 3x the default's one compile
    assert record.autotune_note == "variants not timed: without Relu50, without Scale (compile budget 3x the default's)"


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
    assert {v.timed for v in backend.records[0].autotune_variants} == {"forward+backward"}
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


def test_report_renders_the_timings(mapping, monkeypatch):
    monkeypatch.setattr(autotune, "COMPILE_BUDGET", 100.0)  # "eager" compiles cost nothing: time every variant
    model = nn.Sequential(Relu50(), Scale()).eval()
    with use_kernel_mapping(mapping(Relu50=ONE_RELU, Scale=slow_scale())), torch.no_grad():
        torch.compile(model, backend="hubkernels", options={"inner": "eager", "autotune": True})(torch.randn(64, 8))
    report = kernel_fx.last_compile_report()
    assert report.summary() == "2 sites: 1 kernel, 1 original (slower than original: 1)"
    text = report.render()
    assert "autotune: whole-graph medians, every variant compiled by eager" in text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("kernel "))
    assert header.split() == ["kernel", "compared", "timed", "with", "ms", "without", "ms", "speedup", "runs", "sites"]
    relu_row = next(line for line in lines if line.startswith("Relu50 "))
    assert relu_row.split()[-3:] == ["kernel", "0", "#0"] and "without Scale vs" in relu_row
    assert next(line for line in lines if line.startswith("variant ")).split() == ["variant", "compile", "ms", "run", "ms", "chosen", "note"]
    assert next(line for line in lines if line.startswith("without Scale ")).split()[-1] == "yes"
    assert "| Scale " in report.render("markdown")
    graph, = json.loads(report.to_json())["graphs"]
    assert [(r["kernel"], r["kept"], r["sites"]) for r in graph["autotune"]] == [("Relu50", True, ["0 #0"]), ("Scale", False, ["1 #0"])]
    assert [(v["name"], v["chosen"]) for v in graph["autotune_variants"]] == [
        ("every kernel", False), ("no kernel", False), ("without Relu50", False), ("without Scale", True)]
    assert all(isinstance(v["ms"], float) and isinstance(v["compile_s"], float) for v in graph["autotune_variants"])
    decisions = {d["layer_name"]: d for d in graph["decisions"]}
    assert decisions["Scale"]["figures"]["faster_in_graph"].startswith("whole graph ")
    assert decisions["Scale"]["rejected"]["check"] == "faster_in_graph"
    html = report.to_html()
    assert "autotune: whole-graph medians in ms" in html and "graph, without Scale" in html


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
    record, = backend.records
    assert record.autotune == [] and record.autotune_note == "not timed (RuntimeError: no timer)"
    assert "autotune: not timed (RuntimeError: no timer)" in backend.report.render()
    assert [d.outcome for d in backend.report.decisions] == [Outcome.KERNEL]


def test_a_variant_that_does_not_compile_is_not_chosen(mapping):
    def inner(gm, example_inputs):
        inner.calls += 1
        if inner.calls == 2:  # the second variant: no kernel
            raise RuntimeError("cannot compile this one")
        return gm.forward

    inner.calls = 0
    backend = HubKernelsBackend(inner=inner, autotune=True)
    with use_kernel_mapping(mapping(Scale=slow_scale())), torch.no_grad():
        torch.compile(nn.Sequential(Scale()).eval(), backend=backend)(torch.randn(4, 8))
    record, = backend.records
    every, none = record.autotune_variants
    assert every.chosen and none.note == "not compiled (RuntimeError: cannot compile this one)" and none.ms is None
    assert backend.report.decisions[0].outcome is Outcome.KERNEL


def test_checkpointed_bodies_are_rewritten_before_the_graph_is_timed(mapping):
    from torch.utils.checkpoint import checkpoint

    from kernel_fx import markers

    class Checkpointed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.outer = Scale(), Relu50()

        def forward(self, x):
            return self.outer(checkpoint(self.inner, x, use_reentrant=False))

    seen = []

    def inner(gm, example_inputs):  # what the inner compiler gets, bodies included, for every variant
        seen.append([n for m in gm.modules() if isinstance(m, torch.fx.GraphModule) for n in m.graph.nodes
                     if n.op == "call_function" and markers.is_marker(n.target)])
        return gm.forward

    model = Checkpointed().train()
    x = torch.randn(8, 8, requires_grad=True)
    backend = HubKernelsBackend(inner=inner, autotune=True)
    with use_kernel_mapping(mapping(Relu50=ONE_RELU, Scale=slow_scale())):
        torch.compile(model, backend=backend)(x).sum().backward()
    assert len(seen) >= 2 and not any(seen)  # timed variants and the final graph: no marker op left in a body
    record, = backend.records
    assert {d.layer_name for d in record.decisions} == {"Scale", "Relu50"}
    assert [r.kernel for r in record.autotune] == ["Relu50"]  # the body's sites are decided, not autotuned


def test_dynamic_shapes_are_timed_at_the_example_sizes(mapping):
    model = nn.Sequential(Scale()).eval()
    backend = HubKernelsBackend(inner="eager", autotune=True)
    with use_kernel_mapping(mapping(Scale=slow_scale())), torch.no_grad():
        compiled = torch.compile(model, backend=backend, dynamic=True)
        for n in (4, 6, 9):
            x = torch.randn(n, 8)
            torch.testing.assert_close(compiled(x), model(x))
    for record in backend.records:
        assert [v.name for v in record.autotune_variants if v.ms is not None] == ["every kernel", "no kernel"]
        assert record.autotune_note is None


@pytest.mark.parametrize("inner", ["eager", "aot_eager"])
def test_being_slower_is_a_choice_not_a_fallback(inner, mapping):
    model = nn.Sequential(nn.Linear(8, 8), Scale()).eval()
    x = torch.randn(64, 8)
    backend = HubKernelsBackend(inner=inner, autotune=True, use_fallback=False)  # would raise on a fallback
    with use_kernel_mapping(mapping(Scale=slow_scale())), torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend=backend)(x), model(x))
    decision, = backend.report.decisions
    assert decision.outcome is Outcome.ORIGINAL and decision.rejected.reason is Reason.SLOWER_THAN_ORIGINAL
    assert decision.rejected.detail.endswith(f"original ({inner})")
