"""Inline SVG charts: horizontal bars with their labels and values, no plotting library.

Each bar is a `<rect class="bar">` with a `<title>` (the browser's tooltip), so a page stays
readable with scripts off and tests can count bars.

>>> svg = bar_chart([Bar("eager", 66.3), Bar("kernelize", 55.5)], unit="ms", chart_id="t")
>>> svg.count('class="bar'), 'id="t"' in svg
(2, True)
>>> "&lt;b&gt;" in bar_chart([Bar("<b>", 1.0)], unit="ms", chart_id="x")
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

ROW = 22  # px per bar
LABEL_WIDTH = 200  # px for the label column; long labels are cut with an ellipsis, the tooltip has all
BAR_WIDTH = 260  # px for the longest bar
VALUE_WIDTH = 110  # px for the value text after a bar


@dataclass(frozen=True)
class Bar:
    """One bar: its label, its value, the text written after it (default: the value with its
    unit), CSS classes naming its series (`kernel`, `original`, `timed`, ...), and a detail
    for the tooltip only."""

    label: str
    value: float
    text: str = ""
    series: str = ""
    detail: str = ""


def bar_chart(bars: Sequence[Bar], *, unit: str, chart_id: str, title: str = "") -> str:
    """Bars scaled to the largest value, one row each, in the order given."""
    top = max((b.value for b in bars), default=0.0) or 1.0
    height = ROW * len(bars) + 8
    width = LABEL_WIDTH + BAR_WIDTH + VALUE_WIDTH
    rows = []
    for i, bar in enumerate(bars):
        y = 4 + i * ROW
        length = max(1.0, BAR_WIDTH * bar.value / top) if bar.value > 0 else 0.0
        text = bar.text or f"{bar.value:.4g} {unit}"
        label = bar.label if len(bar.label) <= 28 else bar.label[:27] + "\u2026"  # ~7 px a character
        tip = f"{bar.label}: {text}" + (f" ({bar.detail})" if bar.detail else "")
        series = f" {escape(bar.series)}" if bar.series else ""
        rows.append(
            f'<g><title>{escape(tip)}</title>'
            f'<text class="label" x="{LABEL_WIDTH - 6}" y="{y + 15}" text-anchor="end">{escape(label)}</text>'
            f'<rect class="bar{series}" x="{LABEL_WIDTH}" y="{y + 2}" width="{length:.1f}" height="{ROW - 6}" rx="2"/>'
            f'<text class="value" x="{LABEL_WIDTH + length + 6:.1f}" y="{y + 15}">{escape(text)}</text></g>'
        )
    caption = f"<title>{escape(title)}</title>" if title else ""
    return (f'<svg class="chart" id="{escape(chart_id)}" role="img" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">{caption}{"".join(rows)}</svg>')
