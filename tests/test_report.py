"""The report: contents for eager and compiled runs, rendering, JSON, and explain's dry run."""

import json

import torch
from models import Net, scale_source

import kernel_fx
from kernel_fx import LocalLayerRepository, Mode, Outcome, Reason, kernelize, use_kernel_mapping
from kernel_fx.compile.backend import HubKernelsBackend


def mapping(kernel_repo):
    return {"Scale": {"cpu": LocalLayerRepository(kernel_repo({"torch-cpu": {"layers.py": scale_source()}}), layer_name="Scale")}}


def test_eager_report_rows_summary_and_json(kernel_repo):
    model = Net()
    with use_kernel_mapping(mapping(kernel_repo)):
        kernelize(model, mode=Mode.INFERENCE)
    report = kernel_fx.report(model)
    text = str(report)
    assert "scale" in text and "Scale" in text and "torch-cpu" in text and "no mapping" in text
    assert report.summary() == "2 sites: 1 kernel, 1 original (no mapping: 1)"
    markdown = report.render("markdown")
    assert markdown.startswith("| site ") and "|---" in markdown.replace(" ", "").replace(":", "")
    data = json.loads(report.to_json())
    by_path = {d["path"]: d for d in data["decisions"]}
    assert by_path["scale"]["outcome"] == "kernel" and by_path["add"]["rejected"]["reason"] == "no mapping"


def test_dynamic_mode_sites_group_their_conditions(kernel_repo):
    repo = kernel_repo({"torch-cpu": {"layers.py": scale_source(has_backward=False)}})
    model = Net()
    with use_kernel_mapping({"Scale": {"cpu": LocalLayerRepository(repo, layer_name="Scale")}}):
        kernelize(model)
    scale = [d for d in kernel_fx.report(model).decisions if d.path == "scale"]
    modes = {d.mode: d for d in scale}
    assert modes["INFERENCE, INFERENCE|TORCH_COMPILE"].outcome is Outcome.KERNEL
    assert modes["TRAINING, TRAINING|TORCH_COMPILE"].rejected.reason is Reason.TRAINING_FALLBACK
    assert [d.mode for d in kernel_fx.report(model).decisions if d.path == "add"] == ["any"]


def test_compiled_report_has_op_counts_node_changes_and_site_diffs(kernel_repo):
    backend = HubKernelsBackend(inner="eager")
    model = Net().eval()
    x = torch.randn(3, 4)
    with use_kernel_mapping(mapping(kernel_repo)), torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(torch.compile(model, backend=backend)(x), expected)
    report = backend.report
    scale = next(d for d in report.decisions if d.path == "scale")
    assert scale.outcome is Outcome.KERNEL and scale.call_index == 0 and scale.path_kind == "compiled"
    (graph,) = report.graphs
    assert graph.op_delta.get("aten.mul.Tensor", 0) > 0 and graph.op_delta.get("operator.mul", 0) < 0
    assert graph.nodes_removed and graph.nodes_added
    (diff,) = graph.site_diffs
    assert diff.path == "scale" and any("operator.mul" in line for line in diff.before)
    assert any("aten.mul" in line for line in diff.after)
    text = report.render()
    assert "graph 0" in text and "nodes removed" in text and "scale #0 (Scale, traced)" in text
    assert "```diff" in report.render("markdown")
    assert json.loads(report.to_json())["graphs"][0]["site_diffs"][0]["path"] == "scale"


def test_last_compile_report_for_the_string_backend(kernel_repo):
    model = Net().eval()
    with use_kernel_mapping(mapping(kernel_repo)), torch.no_grad():
        torch.compile(model, backend="hubkernels", options={"inner": "eager"})(torch.randn(2, 4))
    assert kernel_fx.last_compile_report().summary().startswith("2 sites: 1 kernel")


def test_explain_changes_nothing(kernel_repo):
    model = Net()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    forwards = {n: vars(m).get("forward") for n, m in model.named_modules()}
    x = torch.randn(2, 4)
    with use_kernel_mapping(mapping(kernel_repo)):
        explained = kernel_fx.explain(model, x)
    assert explained.eager.summary().startswith("2 sites: 1 kernel")
    assert explained.compiled is not None and explained.compiled.summary().startswith("2 sites: 1 kernel")
    assert "torch.compile(backend='hubkernels')" in explained.render()
    assert {n: vars(m).get("forward") for n, m in model.named_modules()} == forwards
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name])
    assert "_kernel_fx_sites" not in vars(model)


def test_explain_passes_keyword_arguments_to_the_model_and_kernelize_arguments_to_kernelize(kernel_repo):
    seen = []

    class Keyworded(Net):
        def forward(self, x, *, shift=0.0):
            seen.append(shift)
            return super().forward(x) + shift

    with use_kernel_mapping(mapping(kernel_repo)):
        explained = kernel_fx.explain(Keyworded(), torch.randn(2, 4), shift=1.5,
                                      kernelize_kwargs={"filter_fn": lambda module, path: False})
    assert seen == [1.5]  # the compiled dry run called model(x, shift=1.5)
    assert explained.eager.summary() == "2 sites: 0 kernel, 2 original (filtered out: 2)"
    assert explained.compiled is not None


def test_print_report_writes_to_the_stream_given(kernel_repo, capsys):
    import io

    model = Net()
    with use_kernel_mapping(mapping(kernel_repo)):
        kernelize(model)
    stream = io.StringIO()
    from kernel_fx.report import print_report

    print_report(kernel_fx.report(model), file=stream)
    assert "2 sites" in stream.getvalue() and capsys.readouterr().out == ""
