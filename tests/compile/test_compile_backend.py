"""Registration and options of the hubkernels backend."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from helpers_compile import MIX, Block
from models import Scale, scale_source
from torch import nn

import kernel_fx
from kernel_fx import HubKernelsBackend, Mode, Outcome, Reason, use_kernel_mapping
from kernel_fx.compile.options import BackendOptionError


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_backend_name_works_without_importing_kernel_fx():
    out = _run("""
        import sys, torch
        from torch import nn
        class Net(nn.Module):
            def forward(self, x):
                return x.sin() + 1
        x = torch.ones(3)
        out = torch.compile(Net(), backend="hubkernels", options={"inner": "eager"})(x)
        print(torch.equal(out, x.sin() + 1), "hubkernels" in torch._dynamo.list_backends(exclude_tags=()))
    """)
    assert out.split() == ["True", "True"]


def test_import_kernel_fx_does_not_import_dynamo_or_inductor():
    out = _run("""
        import sys
        import kernel_fx
        print(sorted(m for m in ("torch._dynamo", "torch._inductor") if m in sys.modules))
        kernel_fx.hubkernels  # the lazy export loads on use
        print("torch._dynamo" in sys.modules)
    """)
    assert out.split("\n")[:2] == ["[]", "True"]


def test_public_names():
    from kernel_fx.compile.backend import hubkernels, last_compile_report

    assert kernel_fx.hubkernels is hubkernels
    assert kernel_fx.last_compile_report is last_compile_report
    assert kernel_fx.HubKernelsBackend is HubKernelsBackend


def test_unknown_option_is_an_error_listing_the_known_ones():
    model = nn.Sequential(Scale())
    with pytest.raises(Exception, match=r"Unknown hubkernels option 'innr'\. Known options are: autotune, checks, device, inner, mode, use_fallback, verify\."):
        torch.compile(model, backend="hubkernels", options={"innr": "eager"})(torch.ones(8))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"inner": "no-such-backend"}, r"inner='no-such-backend' is not a registered backend\. Known backends are: .*aot_eager"),
        ({"mode": "fast"}, r"mode='fast' is not a mode; use 'inference', 'training'"),
        ({"device": "quantum"}, r"device='quantum'"),
        ({"use_fallback": "no"}, r"use_fallback='no' must be True or False"),
    ],
    ids=["inner", "mode", "device", "use_fallback"],
)
def test_bad_option_values(kwargs, message):
    with pytest.raises(BackendOptionError, match=message):
        HubKernelsBackend(**kwargs)


@pytest.mark.parametrize("inner", ["eager", "aot_eager", "inductor"])
def test_inner_compilers(inner, mapping):
    kernels = mapping(Scale=scale_source(), Mix=MIX)
    model = Block().eval()
    x = torch.randn(4, 8)
    backend = HubKernelsBackend(inner=inner)
    with use_kernel_mapping(kernels), torch.no_grad():
        out = torch.compile(model, backend=backend)(x)
        torch.testing.assert_close(out, model(x))
    assert [r.inner for r in backend.records] == [inner]
    assert {d.path: d.outcome for d in backend.report.decisions} == {
        "scale": Outcome.KERNEL, "mix": Outcome.KERNEL, "norm": Outcome.ORIGINAL}


def test_inner_callable_receives_the_rewritten_graph(mapping):
    seen = []

    def inner(gm, example_inputs):
        seen.append({str(n.target) for n in gm.graph.nodes if n.op == "call_function"})
        return gm.forward

    with use_kernel_mapping(mapping(Scale=scale_source())), torch.no_grad():
        torch.compile(nn.Sequential(Scale()).eval(), backend=HubKernelsBackend(inner=inner))(torch.ones(8))
    assert seen and any("aten.mul" in t for t in seen[0])
    assert not any("boundary" in t for t in seen[0])  # markers never reach the inner compiler


def test_options_through_torch_compile(mapping):
    with use_kernel_mapping(mapping(Scale=scale_source())), torch.no_grad():
        torch.compile(nn.Sequential(Scale()), backend="hubkernels", options={"inner": "eager", "device": "cuda"})(torch.ones(8))
    decision, = kernel_fx.last_compile_report().decisions
    assert decision.rejected.reason is Reason.NO_DEVICE_ENTRY


def test_mode_option_picks_the_mapping_entry(kernel_repo):
    from helpers_compile import mapping_for

    inference = mapping_for(kernel_repo, Scale=scale_source())["Scale"]["cpu"]
    training = mapping_for(kernel_repo, Scale=scale_source())["Scale"]["cpu"]
    kernels = {"Scale": {"cpu": {Mode.INFERENCE | Mode.TORCH_COMPILE: inference, Mode.TRAINING | Mode.TORCH_COMPILE: training}}}
    picked = {}
    for mode in (None, "training"):
        torch._dynamo.reset()
        backend = HubKernelsBackend(inner="eager", mode=mode)
        with use_kernel_mapping(kernels), torch.no_grad():
            torch.compile(nn.Sequential(Scale()).eval(), backend=backend)(torch.ones(8))
        decision, = backend.report.decisions
        picked[mode] = (decision.mode, decision.repository)
    assert picked[None] == ("INFERENCE|TORCH_COMPILE", str(inference.repo_path))
    assert picked["training"] == ("TRAINING|TORCH_COMPILE", str(training.repo_path))


def test_use_fallback_false_raises_with_the_reason(mapping):
    model = nn.Sequential(Scale()).train()
    with use_kernel_mapping(mapping(Scale=scale_source(has_backward=False))):
        with pytest.raises(Exception, match=r"training fallback: kernel has no backward.*use_fallback"):
            torch.compile(model, backend=HubKernelsBackend(inner="eager", use_fallback=False))(torch.ones(8))


def test_no_mapping_is_a_fallback_error_as_in_kernels():
    backend = HubKernelsBackend(inner="eager", use_fallback=False)
    with pytest.raises(Exception, match=r"Cannot kernelize .*no mapping"):
        torch.compile(nn.Sequential(Scale()), backend=backend)(torch.ones(8))


def test_no_mapping_keeps_the_original_with_fallback():
    backend = HubKernelsBackend(inner="eager")
    torch.compile(nn.Sequential(Scale()), backend=backend)(torch.ones(8))
    assert backend.report.decisions[0].rejected.reason is Reason.NO_MAPPING


def test_last_compile_report_follows_the_compiled_callable(mapping):
    x = torch.randn(2, 8)
    first, second = nn.Sequential(Scale()).eval(), Block().eval()
    with use_kernel_mapping(mapping(Scale=scale_source())), torch.no_grad():
        compiled_first = torch.compile(first, backend="hubkernels", options={"inner": "eager"})
        compiled_first(x)
        report = kernel_fx.last_compile_report()
        assert [d.layer_name for d in report.decisions] == ["Scale"]
        compiled_first(x + 1)  # cached: nothing new
        assert kernel_fx.last_compile_report() is report and len(report.graphs) == 1
        torch.compile(second, backend="hubkernels", options={"inner": "eager"})(x)
    other = kernel_fx.last_compile_report()
    assert other is not report
    assert sorted(d.layer_name for d in other.decisions) == ["AddNorm", "Mix", "Scale"]
