"""The sites table: one row per decision of every report, with the data attributes the page's
script sorts and filters on (`data-outcome`, `data-reason`, `data-report`) and the filter controls.

>>> from kernel_fx.decisions import Decision, Outcome, Reason, Rejected
>>> d = Decision(path="mlp.act", layer_name="SiluAndMul", module_class="SiluAndMul", device="cpu",
...              mode="INFERENCE", outcome=Outcome.ORIGINAL, rejected=Rejected(Reason.NO_MAPPING, "none"))
>>> table = sites_table({"eager": [d]}, {})
>>> table.count("<tr class=\\"site\\""), 'data-reason="no mapping"' in table
(1, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from ..decisions import Decision, Outcome
from ..graph_records import AutotuneResult

OUTCOMES = [o.value for o in Outcome]


def site_label(path: str, call_index: int | None) -> str:
    """How reports name a site: `layers.0.mlp.act #0` (the autotune records use the same)."""
    return (path or "<root>") + ("" if call_index is None else f" #{call_index}")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _cell(text: str, sort: float | str | None = None, title: str = "", css: str = "") -> str:
    attrs = "" if sort is None else f' data-sort="{escape(str(sort))}"'
    attrs += f' title="{escape(title)}"' if title else ""
    attrs += f' class="{css}"' if css else ""
    return f"<td{attrs}>{escape(text)}</td>"


def _reason_cell(d: Decision) -> str:
    if d.rejected is None:
        return '<td class="reason">-</td>'
    return (f'<td class="reason"><span class="tag">{escape(d.rejected.reason.value)}</span> '
            f"{escape(d.rejected.detail)}</td>")


def _row(report: str, d: Decision, timed: AutotuneResult | None, with_report: bool, with_error: bool, with_timing: bool) -> str:
    repository = (d.repository or "-") + (" (unpinned)" if d.unpinned else "")
    cells = [_cell(report)] if with_report else []
    cells += [
        _cell(site_label(d.path, d.call_index), css="path"), _cell(d.layer_name), _cell(d.module_class), _cell(d.device),
        f"<td>{'|<wbr>'.join(escape(part) for part in d.mode.split('|'))}</td>",  # INFERENCE|TORCH_COMPILE may wrap
        f'<td><span class="outcome {d.outcome.name.lower()}">{escape(d.outcome.value)}</span></td>',
        _cell(repository, css="repo"), _cell(d.variant or "-", css="nowrap"),
    ]
    if with_error:
        m = d.measured
        cells.append(_cell("-" if m is None else m.short(), sort=-1 if m is None else m.max_abs, title="" if m is None else str(m)))
    if with_timing:
        text = "-" if timed is None else f"{_ms(timed.kernel_ms)} / {_ms(timed.original_ms)}"
        sort = -1 if timed is None or timed.kernel_ms is None else timed.kernel_ms
        cells.append(_cell(text, sort=sort, title="" if timed is None else f"{timed.kernel}, whole graph: {timed.shapes}, {timed.timed}"))
    cells.append(_reason_cell(d))
    reason = "" if d.rejected is None else d.rejected.reason.value
    return (f'<tr class="site" data-report="{escape(report)}" data-outcome="{escape(d.outcome.value)}" '
            f'data-reason="{escape(reason)}" data-kind="{escape(d.path_kind)}">{"".join(cells)}</tr>')


def _timed_sites(graphs: Sequence) -> dict[str, AutotuneResult]:
    return {label: r for g in graphs for r in g.autotune for label in r.sites}


def _select(name: str, label: str, options: Sequence[tuple[str, str]]) -> str:
    items = "".join(f'<option value="{escape(v)}">{escape(t)}</option>' for v, t in options)
    return f'<label>{escape(label)} <select data-filter="{name}">{items}</select></label>'


def filters(decisions: Mapping[str, Sequence[Decision]]) -> str:
    """The controls above the table: report, outcome, reason, free text, and the visible-row count."""
    present = sorted({d.rejected.reason.value for ds in decisions.values() for d in ds if d.rejected is not None})
    controls = []
    if len(decisions) > 1:
        controls.append(_select("report", "report", [("", "all"), *((r, r) for r in decisions)]))
    controls.append(_select("outcome", "runs", [("", "all"), *((o, o) for o in OUTCOMES)]))
    controls.append(_select("reason", "reason", [("", "all"), ("-", "none (no reason)"), *((r, r) for r in present)]))
    controls.append('<label>text <input type="search" data-filter="text" placeholder="path, layer, repository..."></label>')
    controls.append('<span class="shown" aria-live="polite"></span>')
    return f'<div class="filters">{"".join(controls)}</div>'


def sites_table(decisions: Mapping[str, Sequence[Decision]], graphs: Mapping[str, Sequence]) -> str:
    """`decisions` and `graphs` keyed by report name; a row per decision, in each report's order."""
    everything = [d for ds in decisions.values() for d in ds]
    with_report = len(decisions) > 1
    with_error = any(d.measured is not None for d in everything)
    with_timing = any(g.autotune for gs in graphs.values() for g in gs)
    headers = (["report"] if with_report else []) + ["site", "layer", "class", "device", "mode", "runs", "repository@revision", "variant"]
    headers += (["error (verify)"] if with_error else []) + (["graph ms with / without (autotune)"] if with_timing else []) + ["reason"]
    head = "".join(f'<th><button type="button" data-col="{i}">{escape(h)}</button></th>' for i, h in enumerate(headers))
    rows = []
    for report, ds in decisions.items():
        timed = _timed_sites(graphs.get(report, ()))
        rows += [_row(report, d, timed.get(site_label(d.path, d.call_index)), with_report, with_error, with_timing) for d in ds]
    return (filters(decisions) + f'<div class="scroll"><table class="sites"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
            + ('<p class="empty">No sites: no extensible layer was found.</p>' if not rows else ""))
