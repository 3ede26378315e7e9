"""Which calls become sites, and how each binds to its forward's parameters: exactly, or not at all."""

from __future__ import annotations

import pytest
import torch
from helpers_compile import AXPY, INNERS, MIX, OUTER, Axpy, HubStyleMix, Mix, Outer
from models import HubStyleScale, Scale, scale_source
from torch import nn

import kernel_fx
from kernel_fx import HubKernelsBackend, Outcome, Reason, use_kernel_mapping


def _compile(model, kernels, *args, inner="eager", **compile_kwargs):
    backend = HubKernelsBackend(inner=inner)
    with use_kernel_mapping(kernels), torch.no_grad():
        out = torch.compile(model, backend=backend, **compile_kwargs)(*args)
        torch.testing.assert_close(out, model(*args), rtol=1e-5, atol=1e-5)
    return backend.report


def _outcomes(report):
    return [(d.path, d.call_index, d.outcome, d.rejected.reason if d.rejected else None) for d in report.decisions]


class TwoInputs(nn.Module):
    def __init__(self, mix: nn.Module) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.mix = mix

    def forward(self, x):
        a = self.proj(x)
        b = x * 2.0
        return self.mix(a, b)  # alpha * b - a: swapped arguments give alpha * a - b


@pytest.mark.parametrize("inner", INNERS)
def test_two_input_layer_reading_its_second_argument_first_binds_exactly(inner, mapping):
    report = _compile(TwoInputs(Mix()).eval(), mapping(Mix=MIX), torch.randn(3, 8), inner=inner)
    assert _outcomes(report) == [("mix", 0, Outcome.KERNEL, None)]


@pytest.mark.parametrize("inner", INNERS)
def test_two_input_layer_marked_only_by_its_layer_name_binds_exactly(inner, mapping):
    """A class marked the way the `kernels` package and transformers mark (only `kernel_layer_name`)
    gets kernel_fx's call boundary when the backend loads, so its arguments bind exactly too."""
    report = _compile(TwoInputs(HubStyleMix()).eval(), mapping(Mix=MIX), torch.randn(3, 8), inner=inner)
    assert _outcomes(report) == [("mix", 0, Outcome.KERNEL, None)]


def test_layer_name_only_class_defined_after_the_backend_is_refused_with_a_reason(mapping):
    backend = HubKernelsBackend(inner="eager")  # marks the classes loaded so far

    class LateMix(nn.Module):
        kernel_layer_name = "Mix"

        def __init__(self) -> None:
            super().__init__()
            self.alpha = 0.5

        def forward(self, x, y):
            return y * self.alpha - x

    model = TwoInputs(LateMix()).eval()
    with use_kernel_mapping(mapping(Mix=MIX)), torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend=backend)(torch.ones(3, 8)), model(torch.ones(3, 8)))
    decision, = backend.report.decisions
    assert decision.outcome is Outcome.ORIGINAL and decision.rejected.reason is Reason.AMBIGUOUS_BINDING
    assert "not one tensor in" in decision.rejected.detail


def test_one_input_layer_without_marked_call_binds_from_the_graph(mapping):
    report = _compile(nn.Sequential(nn.Linear(8, 8), HubStyleScale()).eval(), mapping(Scale=scale_source()), torch.randn(3, 8))
    assert _outcomes(report) == [("1", 0, Outcome.KERNEL, None)]


class Shared(nn.Module):
    """One Scale instance called three times, once through a second attribute name."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = Scale()
        self.alias = self.scale

    def forward(self, x):
        h = self.scale(x)
        h = self.scale(h + 1)
        return self.alias(h.sin())


@pytest.mark.parametrize("kernel", ["Scale", None], ids=["kernel", "no-kernel"])
def test_shared_instance_gives_one_site_per_call(kernel, mapping):
    kernels = mapping(Scale=scale_source()) if kernel else {}
    report = _compile(Shared().eval(), kernels, torch.randn(3, 8))
    expected = Outcome.KERNEL if kernel else Outcome.ORIGINAL
    assert [(d.path, d.call_index, d.outcome) for d in report.decisions] == [
        ("scale", 0, expected), ("scale", 1, expected), ("alias", 2, expected)]


@pytest.mark.parametrize("nested_calls", [True, False], ids=["b(a(x))", "a-then-b"])
def test_shared_instance_through_two_paths_without_markers_stays_exact(nested_calls, mapping):
    # Depending on the order of attribute reads, dynamo gives these two calls either the same
    # nn_module_stack key under two paths, or two keys under one path: two sites either way.
    class HubShared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = HubStyleScale()
            self.b = self.a

        def forward(self, x):
            if nested_calls:
                return self.b(self.a(x))
            h = self.a(x)
            return self.b(h + 1)

    report = _compile(HubShared().eval(), mapping(Scale=scale_source()), torch.randn(3, 8))
    # dynamo names both calls by the first path it saw ("a"); what matters is two exact sites
    assert [(d.call_index, d.outcome) for d in report.decisions] == [(0, Outcome.KERNEL), (1, Outcome.KERNEL)]


@pytest.mark.parametrize(
    "layers, expected",
    [
        ({"Outer": OUTER, "Scale": scale_source()}, [("outer", Outcome.KERNEL, None), ("outer.inner", Outcome.ORIGINAL, Reason.ENCLOSED)]),
        ({"Scale": scale_source()}, [("outer", Outcome.ORIGINAL, Reason.NO_MAPPING), ("outer.inner", Outcome.KERNEL, None)]),
    ],
    ids=["outer-kernel", "inner-kernel"],
)
def test_nested_extensible_modules(layers, expected, mapping):
    model = nn.Sequential()
    model.add_module("outer", Outer())
    report = _compile(model.eval(), mapping(**layers), torch.randn(3, 8))
    assert [(d.path, d.outcome, d.rejected.reason if d.rejected else None) for d in report.decisions] == expected


def test_keyword_arguments_and_constants_reach_the_kernel(mapping):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.axpy = Axpy()

        def forward(self, x):
            h = self.axpy(x, alpha=3.0)
            return self.axpy(h, x, alpha=0.5)

    report = _compile(Net().eval(), mapping(Axpy=AXPY), torch.randn(3, 8))
    assert [(d.call_index, d.outcome) for d in report.decisions] == [(0, Outcome.KERNEL), (1, Outcome.KERNEL)]


@kernel_fx.use_kernel_forward_from_hub("Scale")
class BreakingScale(Scale):
    """Scale with a graph break inside its own (marked) forward."""

    def forward(self, x):
        x = x + 1
        torch._dynamo.graph_break()
        return x * self.weight * self.factor


class BreakInside(nn.Module):
    """Scale whose forward has a graph break: the call is never whole in one graph."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.scale = BreakingScale()

    def forward(self, x):
        return self.scale(self.lin(x)).cos()


@pytest.mark.parametrize("nested", [False, True], ids=["graph-break", "nested-graph-break"])
def test_graph_break_inside_a_forward_is_never_substituted(nested, mapping):
    with torch._dynamo.config.patch(nested_graph_breaks=nested):
        report = _compile(BreakInside().eval(), mapping(Scale=scale_source()), torch.randn(3, 8))
    assert report.decisions  # the broken call shows up, as partial, in each graph that has a part
    assert {d.outcome for d in report.decisions} == {Outcome.ORIGINAL}
    assert {d.rejected.reason for d in report.decisions} == {Reason.PARTIAL_REGION}


def test_graph_breaks_around_extensible_calls(mapping):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = Scale(), Scale()

        def forward(self, x):
            h = self.first(x)
            torch._dynamo.graph_break()
            return self.second(h + 1)

    backend = HubKernelsBackend(inner="eager")
    model = Net().eval()
    with use_kernel_mapping(mapping(Scale=scale_source())), torch.no_grad():
        x = torch.randn(3, 8)
        torch.testing.assert_close(torch.compile(model, backend=backend)(x), model(x), rtol=1e-5, atol=1e-5)
    assert [[(d.path, d.outcome) for d in r.decisions] for r in backend.records] == [
        [("first", Outcome.KERNEL)], [("second", Outcome.KERNEL)]]


@kernel_fx.use_kernel_forward_from_hub("Weighted")
class Weighted(nn.Module):
    def forward(self, x, weights):
        return x * weights[0] + weights[1]


WEIGHTED = """
import torch
from torch import nn

class Weighted(nn.Module):
    can_torch_compile = True

    def forward(self, x, weights):
        return torch.add(torch.mul(x, weights[0]), weights[1])
"""


class WeightedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weighted = Weighted()

    def forward(self, x):
        return self.weighted(x, (2.0, 3.0))


def test_argument_the_graph_cannot_carry_gets_its_kernel_at_trace_time(mapping):
    backend = HubKernelsBackend(inner="eager")
    model = WeightedNet().eval()
    with use_kernel_mapping(mapping(Weighted=WEIGHTED)), torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend=backend)(torch.ones(3, 8)), model(torch.ones(3, 8)))
    decision, = backend.report.decisions
    assert decision.outcome is Outcome.KERNEL and decision.rejected is None
    (diff,) = backend.records[0].site_diffs
    assert diff.how.value == "at trace time" and any("torch.mul" in line for line in diff.after)


def test_argument_the_graph_cannot_carry_without_a_kernel_keeps_the_original_with_the_reason(mapping):
    report = _compile(WeightedNet().eval(), mapping(Weighted=WEIGHTED.replace("x, weights", "x, weights, extra")), torch.randn(3, 8))
    decision, = report.decisions
    assert decision.outcome is Outcome.ORIGINAL and decision.rejected.reason is Reason.VALIDATION_FAILED


def test_forward_called_directly_is_not_misattributed(mapping):
    @kernel_fx.use_kernel_forward_from_hub("Outer")
    class DirectOuter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Scale()

        def forward(self, x):
            return torch.tanh(self.inner.forward(x))  # no module call: no nn_module_stack entry

    model = nn.Sequential()
    model.add_module("outer", DirectOuter())
    report = _compile(model.eval(), mapping(Scale=scale_source()), torch.randn(3, 8))
    by_class = {d.module_class: d for d in report.decisions}
    assert by_class["DirectOuter"].rejected.reason is Reason.NO_MAPPING
    assert by_class["Scale"].rejected.reason is Reason.UNKNOWN_MODULE


@kernel_fx.use_kernel_forward_from_hub("Lerp")
def lerp(a, b, weight: float = 0.25):
    return a + weight * (b - a)


LERP = """
import torch
from torch import nn

class Lerp(nn.Module):
    can_torch_compile = True

    def forward(self, a, b, weight: float = 0.25):
        return torch.lerp(a, b, weight)
"""


def test_kernelized_function_binds_exactly(mapping):
    @kernel_fx.use_kernelized_func(lerp)
    class Host(nn.Module):
        def forward(self, x):
            return self.lerp(x.sin(), x.cos(), weight=0.75)

    report = _compile(Host().eval(), mapping(Lerp=LERP), torch.randn(3, 8))
    assert _outcomes(report) == [("lerp", 0, Outcome.KERNEL, None)]


def test_nested_graph_break_inside_an_unmarked_forward_is_partial(mapping):
    class HubStyleBreaking(HubStyleScale):
        def __init__(self) -> None:
            super().__init__()
            # marked itself (per instance, so no wrapper is put on the class): a subclass that
            # overrides a marked forward is otherwise not the marked layer ("overrides forward")
            self.kernel_layer_name = "Scale"

        def forward(self, x):
            x = x.pow(2) + 1
            torch._dynamo.graph_break()
            return x * self.weight * self.factor

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(8, 8)
            self.scale = HubStyleBreaking()

        def forward(self, x):
            return self.scale(self.lin(x)).cos()

    with torch._dynamo.config.patch(nested_graph_breaks=True):
        report = _compile(Net().eval(), mapping(Scale=scale_source()), torch.randn(3, 8))
    # the first graph holds the forward's first half; the second graph has no stack entry for it
    assert [(d.path, d.outcome, d.rejected.reason) for d in report.decisions] == [
        ("scale", Outcome.ORIGINAL, Reason.PARTIAL_REGION)]
