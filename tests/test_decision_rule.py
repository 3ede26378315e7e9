"""One decision rule for every path: the same site under the same mapping and mode gets the same
decision, and `use_fallback=False` raises for the same reasons, eagerly (`kernelize`), compiled
(`hubkernels`) and on a GraphModule (`kernelize_graph`)."""

from __future__ import annotations

import copy

import pytest
import torch
from kernel_repos import make_kernel_repo
from torch import nn

import kernel_fx
from kernel_fx import HubKernelsBackend, LocalLayerRepository, Mode, Outcome, Reason, use_kernel_mapping
from kernel_fx.compile.graph_module import graph_report, kernelize_graph, symbolic_trace
from kernel_fx.decisions import NEVER_AN_ERROR


@kernel_fx.use_kernel_forward_from_hub("Shift")
class Shift(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shift = Shift()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shift(x) * 2


KERNEL = '''
import torch
from torch import nn

class Shift(nn.Module):
    has_backward = {has_backward}
    can_torch_compile = True

    def forward(self, {params}):
        return torch.add(x, self.weight)
'''

CASES = {  # name: (kernel source or None for no mapping, layer name in the repo, mode, environment, expected reason)
    "kernel": (dict(has_backward=True, params="x"), "Shift", Mode.INFERENCE, {}, None),
    "no-mapping": (None, "Shift", Mode.INFERENCE, {}, Reason.NO_MAPPING),
    "load-failed": (dict(has_backward=True, params="x"), "NoSuchLayer", Mode.INFERENCE, {}, Reason.LOAD_FAILED),
    "validation-failed": (dict(has_backward=True, params="x, y"), "Shift", Mode.INFERENCE, {}, Reason.VALIDATION_FAILED),
    "training-fallback": (dict(has_backward=False, params="x"), "Shift", Mode.TRAINING, {}, Reason.TRAINING_FALLBACK),
    "disabled": (dict(has_backward=True, params="x"), "Shift", Mode.INFERENCE, {"KERNEL_FX_DISABLE": "1"}, Reason.DISABLED),
}


def eager(model: nn.Module, mode: Mode, use_fallback: bool):
    kernel_fx.kernelize(model, mode=mode | Mode.TORCH_COMPILE, device="cpu", use_fallback=use_fallback)
    return [d for d in kernel_fx.report(model).decisions if d.path == "shift"]


def graph_module(model: nn.Module, mode: Mode, use_fallback: bool):
    gm = symbolic_trace(model)
    kernelize_graph(gm, mode=mode | Mode.TORCH_COMPILE, device="cpu", use_fallback=use_fallback)
    return [d for d in graph_report(gm).decisions if d.path == "shift"]


def compiled(model: nn.Module, mode: Mode, use_fallback: bool):
    backend = HubKernelsBackend(inner="eager", mode=mode, device="cpu", use_fallback=use_fallback)
    x = torch.randn(3, 4, requires_grad=Mode.TRAINING in mode)
    with torch.set_grad_enabled(Mode.TRAINING in mode):
        torch.compile(model.train(Mode.TRAINING in mode), backend=backend)(x)
    return [d for d in backend.report.decisions if d.path == "shift"]


PATHS = {"eager": eager, "graph-module": graph_module, "compiled": compiled}


@pytest.fixture
def case(request, tmp_path, monkeypatch):
    kernel, layer_name, mode, env, reason = CASES[request.param]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    mapping = {}
    if kernel is not None:
        repo = make_kernel_repo(tmp_path / "repo", {"torch-cpu": {"layers.py": KERNEL.format(**kernel)}})
        mapping = {"Shift": {"cpu": LocalLayerRepository(repo, layer_name=layer_name)}}
    return mapping, mode, reason


@pytest.mark.parametrize("case", list(CASES), indirect=True)
def test_every_path_decides_the_same(case):
    mapping, mode, reason = case
    decided = {}
    with use_kernel_mapping(mapping):
        for name, run in PATHS.items():
            torch._dynamo.reset()
            (decision,) = run(Net(), mode, True)
            decided[name] = (decision.outcome, None if decision.rejected is None else decision.rejected.reason)
    expected = (Outcome.KERNEL, None) if reason is None else (Outcome.ORIGINAL, reason)
    assert decided == dict.fromkeys(PATHS, expected)


@pytest.mark.parametrize("case", list(CASES), indirect=True)
def test_use_fallback_false_raises_on_the_same_reasons_everywhere(case):
    mapping, mode, reason = case
    must_raise = reason is not None and reason not in NEVER_AN_ERROR
    with use_kernel_mapping(mapping):
        for name, run in PATHS.items():
            torch._dynamo.reset()
            model = copy.deepcopy(Net())
            if must_raise:
                with pytest.raises(Exception, match=rf"Cannot kernelize .*{reason.value}"):
                    run(model, mode, False)
            else:
                (decision,) = run(model, mode, False)
                assert decision.uses_kernel == (reason is None), name


def test_no_mapping_is_an_error_without_fallback_on_every_path():
    """As in `kernels` ("No layer mapping for `X`"): a marked layer with nothing mapped is not kernelized,
    and with use_fallback=False that is an error, eagerly, compiled and on a GraphModule alike."""
    assert Reason.NO_MAPPING not in NEVER_AN_ERROR
    for run in PATHS.values():
        torch._dynamo.reset()
        with pytest.raises(Exception, match=r"Cannot kernelize .*no mapping: no kernel mapped for layer 'Shift'"):
            run(Net(), Mode.INFERENCE, False)


@kernel_fx.use_kernel_forward_from_hub("Shift", condition=lambda module: module.allowed)
class GatedShift(Shift):
    def __init__(self) -> None:
        super().__init__()
        self.allowed = False


class GatedNet(Net):
    def __init__(self) -> None:
        super().__init__()
        self.shift = GatedShift()


def test_a_false_kernel_condition_filters_the_site_on_every_path(tmp_path):
    repo = make_kernel_repo(tmp_path / "repo", {"torch-cpu": {"layers.py": KERNEL.format(has_backward=True, params="x")}})
    decided = {}
    with use_kernel_mapping({"Shift": {"cpu": LocalLayerRepository(repo, layer_name="Shift")}}):
        for name, run in PATHS.items():
            torch._dynamo.reset()
            (decision,) = run(GatedNet(), Mode.INFERENCE, False)  # filtered out: never an error
            decided[name] = (decision.outcome, decision.rejected.reason)
            allowed = GatedNet()
            allowed.shift.allowed = True
            torch._dynamo.reset()
            assert run(allowed, Mode.INFERENCE, False)[0].uses_kernel, name
    assert decided == dict.fromkeys(PATHS, (Outcome.ORIGINAL, Reason.FILTERED))
