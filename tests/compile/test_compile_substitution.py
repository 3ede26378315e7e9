"""What replaces a site (traced ops, a kernel call, an opaque op), and that outputs stay right
under every inner compiler, dynamic shapes, fullgraph, autocast and inductor modes."""

from __future__ import annotations

import pytest
import torch
from helpers_compile import ADD_NORM, INNERS, MIX, Block, kernel_module
from models import UNTRACEABLE_SCALE, Scale, scale_source
from torch import nn

import kernel_fx
from kernel_fx import HubKernelsBackend, Outcome, Reason, use_kernel_mapping

TOL = dict(rtol=1e-5, atol=1e-5)


def _all_kernels(mapping):
    return mapping(Scale=scale_source(), Mix=MIX, AddNorm=ADD_NORM)


@pytest.mark.parametrize("inner", INNERS)
def test_block_inference_matches_eager(inner, mapping):
    model = Block().eval()
    x = torch.randn(4, 8)
    backend = HubKernelsBackend(inner=inner)
    with use_kernel_mapping(_all_kernels(mapping)), torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend=backend)(x), model(x), **TOL)
    assert [(d.path, d.outcome) for d in backend.report.decisions] == [
        ("scale", Outcome.KERNEL), ("mix", Outcome.KERNEL), ("norm", Outcome.KERNEL)]
    after = backend.records[0].after.ops
    assert after.get("aten.rsqrt.default") == 1 and "torch.rsqrt" not in after  # the kernel's ops, traced in


def test_block_inference_and_training_under_inductor(mapping):
    model = Block()
    x = torch.randn(4, 8)
    backend = HubKernelsBackend(inner="inductor")
    compiled = torch.compile(model, backend=backend)
    with use_kernel_mapping(_all_kernels(mapping)):
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), **TOL)
        model.train()
        compiled(x).square().sum().backward()
        got = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        model(x).square().sum().backward()
    for a, b in zip(got, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b, **TOL)
    assert [{d.outcome for d in r.decisions} for r in backend.records] == [{Outcome.KERNEL}, {Outcome.KERNEL}]


@pytest.mark.parametrize("inner", INNERS)
def test_kernel_without_torch_compile_runs_as_an_opaque_op(inner, mapping):
    kernels = mapping(Scale=scale_source(can_compile=False))
    model = nn.Sequential(nn.Linear(8, 8), Scale()).eval()
    calls = kernel_module(kernels, "Scale").CALLS
    backend = HubKernelsBackend(inner=inner)
    x = torch.randn(2, 8)
    with use_kernel_mapping(kernels), torch.no_grad():
        compiled = torch.compile(model, backend=backend)
        compiled(x)
        before = len(calls)
        torch.testing.assert_close(compiled(x), model(x), **TOL)
    assert len(calls) == before + 1  # the kernel itself ran, at run time
    decision, = backend.report.decisions
    assert decision.outcome is Outcome.OPAQUE_KERNEL and decision.uses_kernel
    assert decision.rejected.reason is Reason.NOT_TRACEABLE and "can_torch_compile = False" in decision.rejected.detail
    assert backend.records[0].after.ops.get("kernel_fx.opaque_kernel.default") == 1


def test_untraceable_kernel_runs_as_an_opaque_op(mapping):
    model = nn.Sequential(Scale()).eval()
    backend = HubKernelsBackend(inner="aot_eager")
    x = torch.randn(2, 8)
    with use_kernel_mapping(mapping(Scale=UNTRACEABLE_SCALE)), torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend=backend)(x), model(x), **TOL)
    decision, = backend.report.decisions
    assert decision.outcome is Outcome.OPAQUE_KERNEL
    assert "tracing the kernel failed" in decision.rejected.detail


@pytest.mark.parametrize("inner", INNERS)
def test_dynamic_shapes_and_float_attributes(inner, mapping, counters):
    model = nn.Sequential(Scale()).eval()
    backend = HubKernelsBackend(inner=inner)
    with use_kernel_mapping(mapping(Scale=scale_source())), torch.no_grad():
        compiled = torch.compile(model, backend=backend, dynamic=True)
        for rows in (2, 5, 7):
            x = torch.randn(rows, 8)
            torch.testing.assert_close(compiled(x), model(x), **TOL)
        model[0].factor = 5.0  # dynamic=True: the float is a graph input, not a constant
        torch.testing.assert_close(compiled(x), model(x), **TOL)
    assert counters["stats"]["unique_graphs"] == 1
    assert backend.report.decisions[0].outcome is Outcome.KERNEL


def test_fullgraph(mapping):
    model = Block().eval()
    x = torch.randn(3, 8)
    backend = HubKernelsBackend(inner="aot_eager")
    with use_kernel_mapping(_all_kernels(mapping)), torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend=backend, fullgraph=True)(x), model(x), **TOL)
    assert {d.outcome for d in backend.report.decisions} == {Outcome.KERNEL}


@pytest.mark.parametrize("inner", INNERS)
def test_autocast_region(inner, mapping):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = Block()

        def forward(self, x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.block(x)

    model = Net().eval()
    x = torch.randn(3, 8)
    backend = HubKernelsBackend(inner=inner)
    with use_kernel_mapping(_all_kernels(mapping)), torch.no_grad():
        out = torch.compile(model, backend=backend)(x)
        expected = model(x)
    assert out.dtype == expected.dtype
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)
    assert {d.outcome for d in backend.report.decisions} == {Outcome.KERNEL}


def test_torch_compile_mode_goes_to_inductor(mapping, monkeypatch):
    from torch._inductor import compile_fx as compile_fx_module

    seen = []
    real = compile_fx_module.compile_fx

    def spy(gm, example_inputs, **kwargs):
        seen.append(kwargs.get("config_patches"))
        return real(gm, example_inputs, **kwargs)

    monkeypatch.setattr(compile_fx_module, "compile_fx", spy)
    model = nn.Sequential(Scale()).eval()
    x = torch.randn(2, 8)
    with use_kernel_mapping(mapping(Scale=scale_source())), torch.no_grad():
        out = torch.compile(model, backend="hubkernels", mode="max-autotune")(x)
    torch.testing.assert_close(out, model(x), **TOL)
    assert seen and seen[0].get("max_autotune") is True


def test_the_pass_adds_no_recompiles(mapping, counters):
    def run(backend):
        torch._dynamo.reset()
        counters.clear()
        model = Block()
        compiled = torch.compile(model, backend=backend)
        for train, rows in ((False, 3), (False, 3), (True, 3), (False, 3), (True, 3)):
            model.train(train)
            with torch.set_grad_enabled(train):
                compiled(torch.randn(rows, 8))
        return dict(counters["stats"])

    with use_kernel_mapping(_all_kernels(mapping)):
        plain = run("eager")
        ours = run(HubKernelsBackend(inner="eager"))
    assert ours["unique_graphs"] == plain["unique_graphs"] == 2


def test_other_backends_and_export_see_the_forward_unchanged(mapping):
    targets = []

    def spy(gm, example_inputs):
        targets.extend(str(n.target) for n in gm.graph.nodes)
        return gm.forward

    model = Block().eval()
    x = torch.randn(3, 8)
    with use_kernel_mapping(_all_kernels(mapping)):
        torch.compile(model, backend=spy)(x)
        exported = torch.export.export(model, (x,))
    assert targets and not any("boundary" in t or "kernel_fx" in t for t in targets)
    assert "kernel_fx" not in str(exported.graph)
    torch.testing.assert_close(exported.module()(x), model(x))


def test_eager_kernelized_model_then_compiled(mapping):
    model = Block().eval()
    x = torch.randn(3, 8)
    kernels = mapping(Scale=scale_source(can_compile=False), Mix=MIX)
    with use_kernel_mapping(kernels):
        kernel_fx.kernelize(model, device="cpu")
        expected = model(x)
        backend = HubKernelsBackend(inner="aot_eager")
        with torch.no_grad():
            torch.testing.assert_close(torch.compile(model, backend=backend)(x), expected, **TOL)
    by_path = {d.path: d for d in backend.report.decisions}
    # Mix: kernelize's forward ran its (compile-able) kernel while dynamo traced; kept as is.
    assert by_path["mix"].outcome is Outcome.KERNEL and "installed by kernelize" in by_path["mix"].repository
    # Scale: kernelize's forward fell back to the marked original under compile; the pass made it opaque.
    assert by_path["scale"].outcome is Outcome.OPAQUE_KERNEL
    assert by_path["norm"].rejected.reason is Reason.NO_MAPPING


def test_a_frame_shared_by_many_layers_compiles_once(mapping, counters):
    # A graph break inside each layer's forward makes the layer's forward its own frame, which
    # dynamo reuses for every instance: the pass must not make it guard on module identity.
    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = Scale()

        def forward(self, x):
            h = self.scale(x)
            torch._dynamo.graph_break()
            return h + 1

    def run(backend):
        torch._dynamo.reset()
        counters.clear()
        model = nn.Sequential(*[Layer() for _ in range(4)]).eval()
        x = torch.randn(2, 8)
        with torch.no_grad():
            torch.testing.assert_close(torch.compile(model, backend=backend)(x), model(x), **TOL)
        return counters["stats"]["unique_graphs"]

    with use_kernel_mapping(mapping(Scale=scale_source())):
        plain = run("eager")
        backend = HubKernelsBackend(inner="eager")
        assert run(backend) == plain
    assert {d.outcome for d in backend.report.decisions} == {Outcome.KERNEL}
