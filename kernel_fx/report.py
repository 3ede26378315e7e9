"""What kernel_fx did, site by site: decisions and graph records gathered into a `Report`, and
rendered as text, markdown or JSON at the edge. The vocabulary itself lives in `decisions`.

>>> d = Decision(path="mlp.act", layer_name="SiluAndMul", module_class="SiluAndMul", device="cpu",
...              mode="INFERENCE", outcome=Outcome.ORIGINAL,
...              rejected=Rejected(Reason.NO_MAPPING, "no kernel mapped for layer 'SiluAndMul'"))
>>> Report([d]).summary()
'1 site: 0 kernel, 1 original (no mapping: 1)'
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from .decisions import Decision, Outcome, Reason, Rejected

if TYPE_CHECKING:
    from .graph_records import GraphRecord, SiteDiff

__all__ = ["Decision", "Outcome", "Reason", "Rejected", "Report", "print_report"]  # the vocabulary, re-exported


@dataclass
class Report:
    """Decisions of one kernelize call or one compiled graph (plus, for graphs, their records)."""

    decisions: list[Decision] = field(default_factory=list)
    graphs: list[GraphRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what kernel_fx did besides the sites (e.g. forwards it gave back)

    def sites(self) -> list[tuple[str, int | None]]:
        return sorted({(d.path, d.call_index) for d in self.decisions}, key=lambda s: (s[0], s[1] or 0))

    def summary(self) -> str:
        """One line: sites, how many run a kernel (opaque among them), and fallbacks by reason."""
        sites = self.sites()
        using = {(d.path, d.call_index) for d in self.decisions if d.uses_kernel}
        opaque = {(d.path, d.call_index) for d in self.decisions if d.outcome is Outcome.OPAQUE_KERNEL}
        reasons = Counter(d.rejected.reason.value for d in self.decisions
                          if d.rejected is not None and d.outcome is Outcome.ORIGINAL)
        n = len(sites)
        text = f"{n} site{'s' if n != 1 else ''}: {len(using)} kernel, {n - len(using)} original"
        if opaque:
            text = text.replace(" kernel,", f" kernel ({len(opaque)} opaque),", 1)
        if reasons:
            text += " (" + ", ".join(f"{r}: {c}" for r, c in sorted(reasons.items())) + ")"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "decisions": [d.as_dict() for d in self.decisions],
            "graphs": [g.as_dict() for g in self.graphs],
            "notes": list(self.notes),
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), indent=kwargs.pop("indent", 2), default=str, **kwargs)

    def table(self, tablefmt: str = "simple") -> str:
        """The decisions, one row per site and condition group."""
        from tabulate import tabulate

        rows = [
            [
                d.path + ("" if d.call_index is None else f" #{d.call_index}"),
                d.layer_name,
                d.module_class,
                d.device,
                d.mode,
                d.outcome.value,
                (d.repository or "-") + (" (unpinned)" if d.unpinned else ""),
                d.variant or "-",
                "-" if d.rejected is None else str(d.rejected),
            ]
            for d in self.decisions
        ]
        headers = ["site", "layer", "class", "device", "mode", "runs", "repository", "variant", "reason"]
        if any(d.measured is not None for d in self.decisions):  # verify=True: the measured error, before the reason
            for row, d in zip(rows, self.decisions):
                row.insert(8, "-" if d.measured is None else d.measured.short())
            headers.insert(8, "error (verify)")
        others = [[(n, f) for n, f in d.figures if f is not d.measured] for d in self.decisions]
        if any(others):  # what other checks measured, by check name
            for row, found in zip(rows, others):
                row.insert(len(row) - 1, "; ".join(f"{n}: {f}" for n, f in found) or "-")
            headers.insert(len(headers) - 1, "checks")
        return tabulate(rows, headers=headers, tablefmt=tablefmt, maxcolwidths=[None] * (len(headers) - 2) + [40, 70]
                        if "checks" in headers else [None] * (len(headers) - 1) + [70])

    def render(self, fmt: str = "text", *, max_diff_lines: int = 12) -> str:
        """The whole report: decisions, then each compiled graph's op counts and site diffs.

        `fmt` is "text" (tabulate's simple tables) or "markdown" (GitHub tables).
        """
        if fmt not in ("text", "markdown"):
            raise ValueError(f"Report format {fmt!r} is not supported; use 'text' or 'markdown'.")
        tablefmt = "github" if fmt == "markdown" else "simple"
        parts = [self.table(tablefmt), self.summary(), *(f"note: {note}" for note in self.notes)]
        parts += [_render_graph(g, tablefmt, fmt, max_diff_lines) for g in self.graphs]
        return "\n\n".join(parts)

    def __str__(self) -> str:
        return self.render("text")

    def to_html(self, **kwargs: Any) -> str:
        """The report as one self-contained HTML page (inline CSS, script and SVG; nothing fetched).

        `title=`, `timings=` (name -> median ms, drawn as bars) and `mapping=` (default: the mapping
        in scope now) go to `kernel_fx.html.render_page`.

        >>> Report().to_html().startswith("<!DOCTYPE html>")
        True
        """
        from .html import render_page

        return render_page(self, **kwargs)

    def _repr_html_(self) -> str:
        """Jupyter shows the report as the page's HTML (scoped to its own `<div>`)."""
        from .html import render_fragment

        return render_fragment(self)


def _render_graph(graph: GraphRecord, tablefmt: str, fmt: str, max_lines: int) -> str:
    from tabulate import tabulate

    title = f"graph {graph.index}" + (f" (compile {graph.compile_id})" if graph.compile_id else "")
    head = (f"{title}: inner compiler {graph.inner or '-'}, pass {graph.pass_seconds * 1e3:.1f} ms, "
            f"{len(graph.nodes_removed)} nodes removed, {len(graph.nodes_added)} added")
    rows = [[t, graph.before.ops.get(t, 0), graph.after.ops.get(t, 0), f"{d:+d}"] for t, d in graph.op_delta.items()]
    parts = [("### " if fmt == "markdown" else "== ") + head]
    if rows:
        parts.append(tabulate(rows, headers=["op", "before", "after", "change"], tablefmt=tablefmt))
    if graph.autotune:
        parts.append(_render_autotune(graph, tablefmt, fmt))
    elif graph.autotune_note:
        parts.append(f"autotune: {graph.autotune_note}")
    for diff in graph.site_diffs:
        parts.append(_render_site_diff(diff, fmt, max_lines))
    return "\n\n".join(parts)


def _render_autotune(graph: GraphRecord, tablefmt: str, fmt: str) -> str:
    from tabulate import tabulate

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.4g}"

    notes = any(r.note for r in graph.autotune)
    rows = [
        [r.kernel, r.shapes, r.timed, ms(r.kernel_ms), ms(r.original_ms),
         "-" if r.speedup is None else f"{r.speedup:.2f}x", "kernel" if r.kept else "original", _sites(r.sites)]
        + ([r.note or "-"] if notes else [])
        for r in graph.autotune
    ]
    headers = ["kernel", "compared", "timed", "with ms", "without ms", "speedup", "runs", "sites"] + (["note"] if notes else [])
    title = f"autotune: whole-graph medians, every variant compiled by {graph.inner or '-'}"
    parts = [("**" + title + "**" if fmt == "markdown" else title), tabulate(rows, headers=headers, tablefmt=tablefmt)]
    if graph.autotune_variants:
        variants = [[v.name, ms(v.compile_s and v.compile_s * 1e3), ms(v.ms), "yes" if v.chosen else "", v.note or ""]
                    for v in graph.autotune_variants]
        parts.append(tabulate(variants, headers=["variant", "compile ms", "run ms", "chosen", "note"], tablefmt=tablefmt))
    if graph.autotune_note:
        parts.append(f"autotune: {graph.autotune_note}")
    return "\n\n".join(parts)


def _sites(sites: tuple[str, ...], shown: int = 3) -> str:
    if len(sites) <= shown:
        return ", ".join(sites)
    return f"{', '.join(sites[:shown])}, ... ({len(sites)} calls)"


def _clip(lines: tuple[str, ...], max_lines: int) -> list[str]:
    if len(lines) <= max_lines:
        return list(lines)
    return [*lines[: max_lines - 1], f"... ({len(lines) - max_lines + 1} more)"]


def _render_site_diff(diff: SiteDiff, fmt: str, max_lines: int) -> str:
    title = f"{diff.path or '<root>'} #{diff.call_index} ({diff.layer_name}, {diff.how.value})"
    body = [f"- {line}" for line in _clip(diff.before, max_lines)] + [f"+ {line}" for line in _clip(diff.after, max_lines)]
    if fmt == "markdown":
        return f"**{title}**\n\n```diff\n" + "\n".join(body) + "\n```"
    return title + "\n" + "\n".join("    " + line for line in body)


def print_report(report: Report, file: IO[str] | None = None) -> None:
    """Print `report` to `file` (standard output, resolved at call time)."""
    (file or sys.stdout).write(f"{report}\n")
