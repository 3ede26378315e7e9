"""What the backend records per graph, as a `kernel_fx.Report` another renderer can use."""

from __future__ import annotations

import json

import torch
from helpers_compile import MIX, Block
from models import Scale, scale_source
from torch import nn

import kernel_fx
from kernel_fx import HubKernelsBackend, Outcome, Report, use_kernel_mapping
from kernel_fx.graph_records import GraphRecord


def _compiled_block(mapping, **compile_kwargs):
    model = Block().eval()
    backend = HubKernelsBackend(inner="eager")
    with use_kernel_mapping(mapping(Scale=scale_source(), Mix=MIX)), torch.no_grad():
        torch.compile(model, backend=backend, **compile_kwargs)(torch.randn(3, 8))
    return backend


def test_graph_record_before_and_after(mapping):
    backend = _compiled_block(mapping)
    record, = backend.records
    assert isinstance(record, GraphRecord) and record.index == 0 and record.inner == "eager"
    assert record.compile_id is not None
    assert "torch.rsqrt" in record.before.code and "boundary" not in record.after.code
    # Scale's `x * w * f` and Mix's `alpha * y - x` went out; the kernels' aten ops came in.
    assert record.before.ops["operator.mul"] == 5 and record.after.ops["operator.mul"] == 2
    assert record.op_delta["aten.sub.Tensor"] == 1 and record.op_delta["operator.sub"] == -1
    assert "out: operator.mul" in record.nodes_removed  # Scale's last op, named by dynamo
    assert any(n.endswith("aten.sub.Tensor") for n in record.nodes_added)
    assert not any("boundary" in n for n in (*record.nodes_removed, *record.nodes_added))
    assert record.pass_seconds > 0


def test_records_are_report_compatible(mapping):
    report = _compiled_block(mapping).report
    assert isinstance(report, Report) and len(report.graphs) == 1
    assert {(d.path, d.call_index, d.path_kind) for d in report.decisions} == {
        ("scale", 0, "compiled"), ("mix", 0, "compiled"), ("norm", 0, "compiled")}
    assert report.summary() == "3 sites: 2 kernel, 1 original (no mapping: 1)"
    data = json.loads(report.to_json())
    graph, = data["graphs"]
    assert set(graph) >= {"code_before", "code_after", "ops_before", "ops_after", "op_delta", "nodes_removed", "nodes_added", "decisions"}
    assert [d["outcome"] for d in graph["decisions"]] == ["kernel", "kernel", "original"]
    assert "scale #0" in str(report)


def test_one_record_per_graph(mapping):
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = Scale(), Scale()

        def forward(self, x):
            h = self.a(x)
            print("graph break")  # noqa: T201 - forces a graph break
            return self.b(h)

    backend = HubKernelsBackend(inner="eager")
    with use_kernel_mapping(mapping(Scale=scale_source())), torch.no_grad():
        torch.compile(Broken().eval(), backend=backend)(torch.randn(2, 8))
    assert [r.index for r in backend.records] == [0, 1]
    assert [[d.path for d in r.decisions] for r in backend.records] == [["a"], ["b"]]
    assert [d.outcome for d in backend.report.decisions] == [Outcome.KERNEL, Outcome.KERNEL]


def test_last_compile_report_of_the_string_backend(mapping):
    model = nn.Sequential(Scale()).eval()
    with use_kernel_mapping(mapping(Scale=scale_source())), torch.no_grad():
        torch.compile(model, backend="hubkernels", options={"inner": "eager"})(torch.randn(2, 8))
    report = kernel_fx.last_compile_report()
    assert [(d.layer_name, d.outcome, d.path_kind) for d in report.decisions] == [("Scale", Outcome.KERNEL, "compiled")]
    assert [g.index for g in report.graphs] == [0]
