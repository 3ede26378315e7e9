"""Issue 19: one check pipeline below every path. The same wrong kernel is refused with the same
reason on all of them — the eager first call (with check_outputs=True), the compiled graph pass, a
call decided while dynamo traced it, a kernel `kernelize` installed and then compiled (hubkernels,
"eager", "aot_eager"), and `kernelize_graph` — and the output is the original's. A check added in
this one file decides on every path too."""

from __future__ import annotations

import warnings

import pytest
import torch
from models import Scale, scale_source
from torch import nn

import kernel_fx
from kernel_fx import HubKernelsBackend, LocalLayerRepository, Mode, Outcome, Reason, kernelize, use_kernel_mapping
from kernel_fx.checks import CheckResult, Phase, check
from kernel_fx.compile.graph_module import graph_report, kernelize_graph, symbolic_trace
from kernel_fx.decisions import Rejected

WRONG_SHAPE = "return (x * self.weight * self.factor)[:1]"  # (1, 8) for a (4, 8) input
RIGHT = "return torch.mul(x, self.weight * self.factor)"


class Memo:
    """Python state passed to a layer: no graph value can stand for it, so the hubkernels choice
    for such a call is made while dynamo traces it."""

    def __init__(self) -> None:
        self.seen: list[int] = []


@kernel_fx.use_kernel_forward_from_hub("Scale")
class RememberingScale(Scale):
    def forward(self, x, memo):
        memo.seen.append(1)
        return x * self.weight * self.factor


REMEMBERING = '''
import torch
from torch import nn

class Scale(nn.Module):
    can_torch_compile = True

    def forward(self, x, memo):
        memo.seen.append(1)
        {body}
'''


class WithMemo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = RememberingScale(8)

    def forward(self, x, memo):
        return self.scale(x, memo) + 1


PATHS = ["eager", "compiled", "trace-time", "kernelized-hubkernels", "kernelized-eager", "kernelized-aot_eager", "fx"]


def run_path(path: str, kernel_repo, body: str, checks=()) -> tuple[torch.Tensor, torch.Tensor, list]:
    """(output, the original model's output, the site's decisions) of one path with a kernel `body`."""
    if path == "trace-time":
        source = REMEMBERING.format(body=body)
        model, reference = WithMemo(), WithMemo()
    else:
        source = scale_source(forward=body)
        model, reference = nn.Sequential(Scale(8)), nn.Sequential(Scale(8))
    reference.load_state_dict(model.state_dict())
    repo = LocalLayerRepository(kernel_repo({"torch-cpu": {"layers.py": source}}), layer_name="Scale")
    x = torch.randn(4, 8)
    torch._dynamo.reset()
    with use_kernel_mapping({"Scale": {"cpu": repo}}), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path == "eager":
            kernelize(model, device="cpu", check_outputs=True, checks=checks)
            out, decisions = model(x), kernel_fx.report(model).decisions
        elif path in ("compiled", "trace-time"):
            backend = HubKernelsBackend(inner="eager", checks=checks)
            out = torch.compile(model, backend=backend)(x, Memo()) if path == "trace-time" else torch.compile(model, backend=backend)(x)
            decisions = backend.report.decisions
        elif path.startswith("kernelized-"):
            kernelize(model, device="cpu", mode=Mode.INFERENCE | Mode.TORCH_COMPILE, checks=checks)
            inner = path.removeprefix("kernelized-")
            backend = HubKernelsBackend(inner="eager", checks=checks) if inner == "hubkernels" else inner
            out = torch.compile(model, backend=backend)(x)
            decisions = kernel_fx.report(model).decisions
            if inner == "hubkernels":  # the pass reports the site too: the same answer
                decisions = decisions + backend.report.decisions
        else:
            gm = kernelize_graph(symbolic_trace(model), device="cpu", example_inputs=(x,), checks=checks)
            out, decisions = gm(x), graph_report(gm).decisions
        want = reference(x, Memo()) if path == "trace-time" else reference(x)
    return out, want, decisions


@pytest.mark.parametrize("path", PATHS)
def test_a_wrong_shaped_kernel_is_refused_on_every_path(kernel_repo, path):
    out, want, decisions = run_path(path, kernel_repo, WRONG_SHAPE)
    torch.testing.assert_close(out, want)  # the original ran: (4, 8), not (1, 8)
    assert decisions and all(d.outcome is Outcome.ORIGINAL for d in decisions)
    assert {d.rejected.reason for d in decisions} == {Reason.WRONG_OUTPUT}
    assert all("shape (1, 8)" in d.rejected.detail and d.rejected.check == "wrong_output" for d in decisions)


@pytest.mark.parametrize("path", PATHS)
def test_a_right_kernel_runs_on_every_path(kernel_repo, path):
    out, want, decisions = run_path(path, kernel_repo, RIGHT)
    torch.testing.assert_close(out, want)
    assert decisions and all(d.outcome is not Outcome.ORIGINAL for d in decisions)


# -- a check of one's own: one file, one line of wiring (checks=[...]) -------------------------------


@check(Phase.SUBSTITUTION)
def not_for_scale(subject):
    """Refuses every Scale kernel, saying which path asked; a real check would look at the subject's
    `expected()` / `actual()` outputs, its module or its kernel."""
    if subject.layer_name == "Scale":
        return Rejected(Reason.REFUSED_BY_CHECK, f"Scale keeps its original ({subject.path_kind})")
    return None


@check(Phase.PLAN)
def counted(subject):
    """Lets everything through and measures something: the figures go in the decision by name."""
    return CheckResult(figures=f"seen on {subject.path_kind}")


@pytest.mark.parametrize("path", PATHS)
def test_a_new_check_decides_on_every_path(kernel_repo, path):
    out, want, decisions = run_path(path, kernel_repo, RIGHT, checks=[not_for_scale, counted])
    torch.testing.assert_close(out, want)
    assert decisions and all(d.outcome is Outcome.ORIGINAL for d in decisions)
    assert {(d.rejected.reason, d.rejected.check) for d in decisions} == {(Reason.REFUSED_BY_CHECK, "not_for_scale")}
    assert all(dict(d.figures).get("counted", "").startswith("seen on ") for d in decisions)


def test_checks_run_in_their_declared_phase_order(kernel_repo):
    """`counted` (PLAN) runs before `wrong_output` (SUBSTITUTION) although given after it."""
    order = []

    @check(Phase.SUBSTITUTION)
    def late(subject):
        order.append("late")

    @check(Phase.PLAN)
    def early(subject):
        order.append("early")

    run_path("compiled", kernel_repo, RIGHT, checks=[late, early])
    assert order == ["early", "late"]
