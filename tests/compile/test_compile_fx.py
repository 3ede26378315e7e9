"""The FX path: symbolic_trace keeps extensible modules as leaves; kernelize_graph substitutes them."""

from __future__ import annotations

import torch
from helpers_compile import ADD_NORM, MIX, Block
from models import scale_source

from kernel_fx import Outcome, Reason, use_kernel_mapping
from kernel_fx.compile.graph_module import graph_report, kernelize_graph, symbolic_trace

TOL = dict(rtol=1e-5, atol=1e-5)

# Python control flow on a traced value: torch.fx cannot trace it.
BRANCHY_MIX = '''
import torch
from torch import nn

class Mix(nn.Module):
    can_torch_compile = True

    def forward(self, x, y):
        if x.dim() == 2:
            return torch.sub(torch.mul(y, self.alpha), x)
        raise ValueError("2-d only")
'''


def test_symbolic_trace_keeps_extensible_modules_as_leaves():
    gm = symbolic_trace(Block())
    modules = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert modules == ["proj", "scale", "mix", "norm", "out"]


def test_kernelize_graph_substitutes_on_call_module_nodes(mapping):
    model = Block().eval()
    x = torch.randn(3, 8)
    gm = symbolic_trace(model)
    with use_kernel_mapping(mapping(Scale=scale_source(), Mix=MIX, AddNorm=ADD_NORM)):
        kernelize_graph(gm, device="cpu")
    torch.testing.assert_close(gm(x), model(x), **TOL)
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["proj", "out"]
    report = graph_report(gm)
    assert [(d.path, d.outcome, d.path_kind) for d in report.decisions] == [
        ("scale", Outcome.KERNEL, "fx"), ("mix", Outcome.KERNEL, "fx"), ("norm", Outcome.KERNEL, "fx")]
    record, = report.graphs
    assert "self.scale(" in record.before.code and "scale.weight" in record.after.code


def test_kernel_fx_cannot_trace_runs_as_one_call(mapping):
    model = Block().eval()
    x = torch.randn(3, 8)
    gm = symbolic_trace(model)
    with use_kernel_mapping(mapping(Mix=BRANCHY_MIX)):
        kernelize_graph(gm, device="cpu")
    torch.testing.assert_close(gm(x), model(x), **TOL)
    decision = {d.path: d for d in graph_report(gm).decisions}["mix"]
    assert decision.outcome is Outcome.OPAQUE_KERNEL and decision.rejected.reason is Reason.NOT_TRACEABLE


def test_training_graph_keeps_kernels_without_backward_out(mapping):
    gm = symbolic_trace(Block().train())
    with use_kernel_mapping(mapping(Scale=scale_source(has_backward=False))):
        kernelize_graph(gm, device="cpu")
    decision = {d.path: d for d in graph_report(gm).decisions}["scale"]
    assert decision.rejected.reason is Reason.TRAINING_FALLBACK and decision.mode == "TRAINING"
