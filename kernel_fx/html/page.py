"""One self-contained HTML page (or notebook fragment) for one or more reports: CSS and script
inline, charts as inline SVG, nothing fetched. Every text from the run is escaped, and the page's
Content-Security-Policy lets only its own script run and loads nothing, so a hostile path or
reason can neither inject markup nor reach the network.

>>> from kernel_fx.report import Report, Decision, Outcome
>>> d = Decision(path="<b>x</b>", layer_name="RMSNorm", module_class="RMSNorm", device="cpu",
...              mode="INFERENCE", outcome=Outcome.KERNEL, repository="org/rms@v1", variant="torch-cpu")
>>> page = render_page(Report([d]), timings=[Timing("eager", 2.0), Timing("kernelized", 1.5)])
>>> page.startswith("<!DOCTYPE html>"), "<b>x</b>" in page, "&lt;b&gt;x&lt;/b&gt;" in page
(True, False, True)
>>> page.count('<tr class="site"'), page.count('class="bar timed"')
(1, 2)
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from importlib import resources
from typing import Any, Protocol

from ..decisions import Decision, Outcome
from ..graph_records import GraphRecord
from .context import context_section
from .graphs import graph_section
from .sites import sites_table
from .svg import Bar, bar_chart


class ReportData(Protocol):
    """What the page reads from a report: `kernel_fx.Report` has it (no import of it here, so the
    report module can offer `to_html()` without a cycle)."""

    decisions: list[Decision]
    graphs: list[GraphRecord]
    notes: list[str]

    def summary(self) -> str: ...


Reports = ReportData | Mapping[str, ReportData]


@dataclass(frozen=True)
class Timing:
    """One timed variant of the whole run (e.g. eager, eager + kernelize, compiled): its median in
    milliseconds and a line of detail for the tooltip."""

    name: str
    ms: float
    detail: str = ""


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _named(reports: Reports) -> dict[str, ReportData]:
    if isinstance(reports, Mapping):
        return dict(reports)
    return {"report": reports}


def _timings(timings: Sequence[Timing] | Mapping[str, float] | None) -> list[Timing]:
    if timings is None:
        return []
    if isinstance(timings, Mapping):
        return [Timing(str(name), float(ms)) for name, ms in timings.items()]
    return list(timings)


def _share_chart(name: str, decisions: Sequence[Decision], chart_id: str) -> str:
    outcomes = Counter(d.outcome for d in decisions)
    reasons = Counter(d.rejected.reason.value for d in decisions if d.outcome is Outcome.ORIGINAL and d.rejected is not None)
    total = len(decisions) or 1
    bars = [Bar(o.value, outcomes[o], series=o.name.lower()) for o in Outcome if outcomes[o]]
    bars += [Bar(f"original: {r}", c, series="original reason") for r, c in reasons.most_common()]
    bars = [Bar(b.label, b.value, f"{b.value:.0f} ({100 * b.value / total:.0f}%)", b.series) for b in bars]
    title = f"{name}: decisions per outcome and reason" if name else "decisions per outcome and reason"
    return f'<figure class="shares"><figcaption>{escape(title)}</figcaption>{bar_chart(bars, unit="", chart_id=chart_id, title=title)}</figure>'


def _timing_chart(timings: list[Timing], chart_id: str) -> str:
    bars = [Bar(t.name, t.ms, f"{t.ms:.4g} ms", "timed", t.detail) for t in timings]
    title = "timed variants: median ms per call"
    return f'<figure class="timings"><figcaption>{escape(title)}</figcaption>{bar_chart(bars, unit="ms", chart_id=chart_id, title=title)}</figure>'


def _body(named: dict[str, ReportData], root: str, title: str, timings: list[Timing], mapping: Mapping[str, Any] | None) -> str:
    single = len(named) == 1
    summaries = "".join(
        f'<p class="summary"><strong>{escape(name)}</strong>: {escape(r.summary())}</p>' if not single else
        f'<p class="summary">{escape(r.summary())}</p>' for name, r in named.items()
    )
    notes = [n for r in named.values() for n in r.notes]
    notes_html = f'<ul class="notes">{"".join(f"<li>{escape(n)}</li>" for n in notes)}</ul>' if notes else ""
    charts = [_share_chart("" if single else name, r.decisions, f"{root}-share-{i}") for i, (name, r) in enumerate(named.items())]
    if timings:
        charts.append(_timing_chart(timings, f"{root}-timings"))
    graphs = [graph_section("" if single else name, g, f"{root}-autotune-{i}-{g.index}")
              for i, (name, r) in enumerate(named.items()) for g in r.graphs]
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<h1>{escape(title)}</h1><p class="note">generated {generated} by kernel_fx</p>{summaries}{notes_html}'
            f'<h2>charts</h2><div class="charts">{"".join(charts)}</div>'
            f'<h2>sites</h2>{sites_table({n: r.decisions for n, r in named.items()}, {n: r.graphs for n, r in named.items()})}'
            + (f'<h2>compiled graphs</h2>{"".join(graphs)}' if graphs else "")
            + context_section(mapping, [d for r in named.values() for d in r.decisions]))


def _parts(reports: Reports, title: str, timings: Any, mapping: Mapping[str, Any] | None) -> tuple[str, str, str]:
    """(CSS, body, script) of one report root; the root's id ties the script to its own elements."""
    root = f"kfx-{uuid.uuid4().hex[:10]}"
    body = f'<div class="kfx" id="{root}">{_body(_named(reports), root, title, _timings(timings), mapping)}</div>'
    return _asset("report.css"), body, _asset("report.js").replace("__ROOT_ID__", root)


def render_fragment(reports: Reports, *, title: str = "kernel_fx report", timings: Sequence[Timing] | Mapping[str, float] | None = None,
                    mapping: Mapping[str, Any] | None = None) -> str:
    """The report as a `<div>` with its own style and script, for a notebook cell (`_repr_html_`)."""
    css, body, script = _parts(reports, title, timings, mapping)
    return f"<style>{css}</style>{body}<script>{script}</script>"


def render_page(reports: Reports, *, title: str = "kernel_fx report", timings: Sequence[Timing] | Mapping[str, float] | None = None,
                mapping: Mapping[str, Any] | None = None) -> str:
    """A whole HTML document: `reports` (one, or several by name: "kernelize", "hubkernels"), the
    run's `timings` as a bar chart, and the `mapping` used (default: the one in scope now)."""
    css, body, script = _parts(reports, title, timings, mapping)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    policy = f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
            f"<style>{css}</style></head><body>{body}<script>{script}</script></body></html>\n")
