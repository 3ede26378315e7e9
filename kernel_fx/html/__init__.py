"""Reports as one self-contained HTML page: `Report.to_html()`, `kernel-fx demo --html FILE`."""

from __future__ import annotations

from .page import ReportData, Timing, render_fragment, render_page

__all__ = ["ReportData", "Timing", "render_fragment", "render_page"]
