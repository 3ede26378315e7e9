"""One section per compiled graph: what dynamo handed over, what the pass changed (op counts
before and after), each substituted call side by side (original ops | kernel ops, collapsed in a
`<details>`, so a 32-layer graph stays one screen), and autotune's whole-graph timings when it ran.

>>> from kernel_fx.graph_records import SiteDiff, SubstitutionKind
>>> d = SiteDiff("norm", 0, "RMSNorm", SubstitutionKind.TRACE_TIME, ("a = torch.rsqrt(x)",), ("b = aten.rsqrt.default(x)",))
>>> html = site_diff(d)
>>> html.startswith("<details"), "trace time" in html, "aten.rsqrt.default" in html
(True, True, True)
"""

from __future__ import annotations

from collections import Counter
from html import escape

from ..graph_records import GraphRecord, SiteDiff, SubstitutionKind
from .sites import site_label
from .svg import Bar, bar_chart


def site_diff(diff: SiteDiff) -> str:
    """A collapsed diff of one call: its title, then the original's ops beside the kernel's."""
    trace_time = diff.how is SubstitutionKind.TRACE_TIME
    badge = f'<span class="badge{" trace" if trace_time else ""}">{escape(diff.how.value)}</span>'
    title = f'<span class="path">{escape(site_label(diff.path, diff.call_index))}</span> {escape(diff.layer_name)} {badge}'
    # At trace time the original was never traced: its side holds a note, not ops.
    shown = f"{len(diff.after)} kernel ops" if trace_time else f"{len(diff.before)} ops \u2192 {len(diff.after)}"
    counts = f'<span class="counts">{shown}</span>'
    before = "\n".join(diff.before) or "(none recorded)"
    after = "\n".join(diff.after) or "(none recorded)"
    return (f'<details class="diff{" trace-time" if trace_time else ""}"><summary>{title} {counts}</summary>'
            f'<div class="sides"><div><h5>original ops</h5><pre class="before">{escape(before)}</pre></div>'
            f'<div><h5>kernel ops</h5><pre class="after">{escape(after)}</pre></div></div></details>')


def _op_table(graph: GraphRecord) -> str:
    changed = graph.op_delta
    before, after = sum(graph.before.ops.values()), sum(graph.after.ops.values())

    def rows(keys: list[str]) -> str:
        return "".join(f"<tr><td>{escape(k)}</td><td>{graph.before.ops.get(k, 0)}</td><td>{graph.after.ops.get(k, 0)}</td>"
                       f"<td>{changed.get(k, 0):+d}</td></tr>" for k in keys)

    head = "<thead><tr><th>op</th><th>before</th><th>after</th><th>change</th></tr></thead>"
    total = f'<tr class="total"><td>all ops</td><td>{before}</td><td>{after}</td><td>{after - before:+d}</td></tr>'
    same = sorted(k for k in {*graph.before.ops, *graph.after.ops} if k not in changed)
    unchanged = (f'<details class="ops-box"><summary>{len(same)} ops unchanged</summary>'
                 f'<table class="ops same">{head}<tbody>{rows(same)}</tbody></table></details>') if same else ""
    return f'<table class="ops">{head}<tbody>{total}{rows(sorted(changed))}</tbody></table>{unchanged}'


def _autotune(graph: GraphRecord, chart_id: str) -> str:
    if not graph.autotune:
        return f'<p class="note">autotune: {escape(graph.autotune_note)}</p>' if graph.autotune_note else ""
    bars = []
    for v in graph.autotune_variants:  # the whole graph, one bar per variant timed
        if v.ms is not None:
            detail = f"{v.timed}; compile {v.compile_s or 0:.2f} s" + ("; chosen" if v.chosen else "")
            series = ("original" if v.name == "no kernel" else "kernel") + (" kept" if v.chosen else "")
            bars.append(Bar(f"graph, {v.name}", v.ms, series=series, detail=detail))
    names = Counter(r.kernel for r in graph.autotune)
    seen: Counter[str] = Counter()
    rows = []
    for r in graph.autotune:
        seen[r.kernel] += 1
        name = r.kernel + (f" ({seen[r.kernel]})" if names[r.kernel] > 1 else "")
        runs = "kernel" if r.kept else "original"
        rows.append(f"<li>{escape(name)}: {escape(r.shapes)}, {len(r.sites)} call{'s' if len(r.sites) != 1 else ''}; runs the {runs}"
                    + (f" ({escape(r.note)})" if r.note else "") + "</li>")
    note = f'<p class="note">autotune: {escape(graph.autotune_note)}</p>' if graph.autotune_note else ""
    title = f"autotune: whole-graph medians in ms, every variant compiled by {graph.inner or '-'}; the chosen one is outlined"
    chart = bar_chart(bars, unit="ms", chart_id=chart_id, title=title) if bars else ""
    return f'<h4>{escape(title)}</h4>{chart}<ul>{"".join(rows)}</ul>{note}'


def graph_section(report: str, graph: GraphRecord, chart_id: str) -> str:
    """Everything recorded about one graph, under a heading naming its report and compile id."""
    trace_time = sum(d.how is SubstitutionKind.TRACE_TIME for d in graph.site_diffs)
    facts = [
        ("compile id", graph.compile_id or "-"), ("inner compiler", graph.inner or "-"),
        ("pass", f"{graph.pass_seconds * 1e3:.1f} ms"), ("nodes removed", str(len(graph.nodes_removed))),
        ("nodes added", str(len(graph.nodes_added))), ("substituted calls", str(len(graph.site_diffs))),
        ("decided at trace time", str(trace_time)),
    ]
    dl = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts)
    diffs = "".join(site_diff(d) for d in graph.site_diffs) or '<p class="note">none: every call in this graph kept its original</p>'
    toggle = '<button type="button" class="expand-all">expand all</button>' if graph.site_diffs else ""
    return (f'<section class="graph"><h3>{escape(report + ": " if report else "")}graph {graph.index}</h3><dl class="facts">{dl}</dl>'
            f'<details class="ops-box" open><summary>op counts before / after ({len(graph.op_delta)} ops changed)</summary>{_op_table(graph)}</details>'
            f'{_autotune(graph, chart_id)}<h4>substituted calls {toggle}</h4><div class="diffs">{diffs}</div></section>')
