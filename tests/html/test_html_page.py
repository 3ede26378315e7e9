"""The HTML report as text: one row per decision, every run's text escaped, nothing fetched, the
charts' bars, and the hooks (`Report.to_html`, `_repr_html_`, `kernel-fx report --html`)."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys

import pytest
import torch

import kernel_fx
from kernel_fx import Decision, Measured, Outcome, Reason, Rejected, Report
from kernel_fx.graph_records import AutotuneResult, GraphRecord, GraphSnapshot, SiteDiff, SubstitutionKind, VariantTiming
from kernel_fx.html import Timing, render_fragment, render_page

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def decision(path="mlp.act", outcome=Outcome.KERNEL, rejected=None, **kw):
    return Decision(path=path, layer_name=kw.pop("layer_name", "SiluAndMul"), module_class="SiluAndMul", device="cpu",
                    mode="INFERENCE", outcome=outcome, rejected=rejected, repository=kw.pop("repository", "org/act@v1"), **kw)


def graph(diffs=(), autotune=(), variants=()):
    before = GraphSnapshot({"torch.rsqrt": 1, "operator.mul": 2}, {}, code="")
    after = GraphSnapshot({"aten.rsqrt.default": 1, "operator.mul": 2}, {}, code="")
    return GraphRecord(0, "0/0", before, after, inner="eager", site_diffs=list(diffs), autotune=list(autotune),
                       autotune_variants=list(variants))


def rows(page):
    return re.findall(r'<tr class="site"[^>]*>', page)


def test_one_row_per_decision_with_reason_and_report_attributes():
    eager = Report([decision("a"), decision("b", Outcome.ORIGINAL, Rejected(Reason.NO_MAPPING, "none"), repository=None)])
    compiled = Report([decision("a", call_index=0)])
    page = render_page({"kernelize": eager, "hubkernels": compiled})
    found = rows(page)
    assert len(found) == 3
    assert sum('data-reason="no mapping"' in r for r in found) == 1
    assert sum('data-report="hubkernels"' in r for r in found) == 1
    assert '<option value="no mapping">' in page  # the reason filter offers the reasons present
    assert "2 sites: 1 kernel, 1 original (no mapping: 1)" in page


@pytest.mark.parametrize("where", ["path", "layer_name", "detail", "note", "diff", "repository", "title"])
def test_every_text_of_the_run_is_escaped(where):
    d = decision(**{k: HOSTILE for k in ("path", "layer_name", "repository") if k == where},
                 outcome=Outcome.ORIGINAL, rejected=Rejected(Reason.VALIDATION_FAILED, HOSTILE if where == "detail" else "x"))
    diff = SiteDiff(HOSTILE if where == "diff" else "p", 0, "L", SubstitutionKind.TRACED, (HOSTILE,), ("y = f(x)",))
    report = Report([d], graphs=[graph([diff])], notes=[HOSTILE] if where == "note" else [])
    page = render_page(report, title=HOSTILE if where == "title" else "t", mapping={"X": {"cpu": HOSTILE}})
    assert "<script>alert" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # the page's own


def test_page_is_self_contained_and_only_its_own_script_may_run():
    page = render_page(Report([decision()], graphs=[graph()]), timings={"eager": 1.0})
    for external in ("<link", " src=", " href=", "@import", "url(", "http://", "https://"):
        assert external not in page
    script = page[page.index("<script>") + len("<script>"):page.index("</script>")]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'" in page


def test_timed_variants_autotune_and_measured_error_are_drawn_and_tabled():
    tuned = [AutotuneResult("SiluAndMul", "without RMSNorm vs no kernel", 0.02, 0.05, True, ("mlp.act #0",)),
             AutotuneResult("RMSNorm", "every kernel vs without RMSNorm", 0.09, 0.03, False, ("norm #0",))]
    variants = [VariantTiming("every kernel", (), 1.5, 0.09), VariantTiming("no kernel", ("SiluAndMul", "RMSNorm"), 1.4, 0.05),
                VariantTiming("without RMSNorm", ("RMSNorm",), 1.4, 0.02, chosen=True), VariantTiming("without SiluAndMul", ("SiluAndMul",),
                                                                                                    note="left out: compile budget")]
    measured = Measured(2.4e-07, 0.02, "float64", 1e-05, 1e-05, "float32[2, 8]")
    report = Report([decision(call_index=0, measured=measured),
                     decision("norm", Outcome.ORIGINAL, Rejected(Reason.SLOWER_THAN_ORIGINAL, "0.09 > 0.03"), call_index=0)],
                    graphs=[graph(autotune=tuned, variants=variants)])
    page = render_page(report, timings=[Timing("eager", 3.0), Timing("compiled", 2.0), Timing("kernelized", 1.0)])
    timings = page[page.index('<figure class="timings">'):]
    assert timings[:timings.index("</figure>")].count('class="bar timed"') == 3
    autotune = page[page.index("autotune: whole-graph medians"):]
    assert autotune[:autotune.index("</svg>")].count('<rect class="bar') == 3  # one per whole-graph variant timed
    assert autotune[:autotune.index("</svg>")].count('<rect class="bar kernel kept"') == 1  # the chosen one
    assert "0.02 / 0.05" in page and "0.09 / 0.03" in page  # each site's autotune figures in its row
    assert "2.4e-07 (0.02x tol)" in page


def test_diffs_are_collapsed_side_by_side_and_trace_time_ones_marked():
    diffs = [SiteDiff("norm", 0, "RMSNorm", SubstitutionKind.TRACED, ("a = torch.rsqrt(x)",), ("b = aten.rsqrt.default(x)",)),
             SiteDiff("attn", 0, "Attention", SubstitutionKind.TRACE_TIME, (), ("c = aten.sdpa(q)",))]
    page = render_page(Report([decision()], graphs=[graph(diffs)]))
    assert page.count('<details class="diff') == 2 and '<details class="diff" open' not in page
    assert page.count('<details class="diff trace-time">') == 1
    assert '<pre class="before">a = torch.rsqrt(x)</pre>' in page and '<pre class="after">b = aten.rsqrt.default(x)</pre>' in page
    assert "decided at trace time</dt><dd>1</dd>" in page


def test_mapping_shown_as_passed_in_scope_or_from_the_decisions():
    report = Report([decision()])
    assert "as passed to the report" in render_page(report, mapping={"RMSNorm": {"cpu": "org/rms@v2"}})
    with kernel_fx.use_kernel_mapping(kernel_fx.default_mapping()):
        in_scope = render_page(report)
    assert "in scope when the page was rendered" in in_scope and "AddRMSNorm" in in_scope
    derived = render_page(report)
    assert "the repositories the decisions name" in derived and "org/act@v1" in derived


def test_report_hooks_page_and_notebook_fragment():
    report = Report([decision()])
    assert report.to_html(title="mine").startswith("<!DOCTYPE html>") and "<title>mine</title>" in report.to_html(title="mine")
    fragment = report._repr_html_()
    assert fragment.startswith("<style>") and "<html" not in fragment and len(rows(fragment)) == 1
    assert ids_differ(render_fragment(report), render_fragment(report))  # two outputs in one notebook do not clash


def ids_differ(a, b):
    return re.search(r'id="(kfx-\w+)"', a).group(1) != re.search(r'id="(kfx-\w+)"', b).group(1)


def test_backend_report_to_html_has_each_graph_and_substituted_call():
    from kernel_fx.demo.model import DemoConfig, build_demo_model

    model = build_demo_model(DemoConfig(num_hidden_layers=1)).eval()
    backend = kernel_fx.HubKernelsBackend(inner="eager")
    with kernel_fx.use_kernel_mapping(kernel_fx.default_mapping()), torch.no_grad():
        torch.compile(model, backend=backend)(torch.randint(0, 100, (1, 8)))
    page = backend.report.to_html()
    assert len(rows(page)) == len(backend.report.decisions) == 6
    assert page.count('<details class="diff') == sum(len(g.site_diffs) for g in backend.report.graphs) == 6


def test_cli_report_writes_the_page(tmp_path):
    out = tmp_path / "report.html"
    done = subprocess.run([sys.executable, "-m", "kernel_fx.cli", "report", "kernel_fx.demo.run:demo_example", "--compile",
                           "--html", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    assert f"wrote {out}" in done.stderr
    assert len(rows(page)) == 22  # 2 layers: 11 sites, in the eager and the compiled report
    assert 'data-report="kernelize"' in page and 'data-report="hubkernels"' in page
