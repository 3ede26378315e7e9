"""The demo's HTML page in a real browser, as a person uses it: Chromium (Debian's, installed by
`make test` through scripts/install_chromium.sh) driven by Playwright, the page opened from disk.

The page comes from the command a user runs, `kernel-fx demo --html`, with one layer left out of
the mapping so the reports have a fallback to filter on; `--json` in the same run gives the
figures the page must show. Set KERNEL_FX_SCREENSHOT=docs/report-html.png to refresh the README's
screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (it is in the test extras: pip install -e '.[test]')")


def chromium() -> str | None:
    """The system Chromium: KERNEL_FX_CHROMIUM, else the first of the usual names on PATH."""
    given = os.environ.get("KERNEL_FX_CHROMIUM")
    if given:
        return given if os.access(given, os.X_OK) else None
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(path of the page, the same run's JSON)."""
    out = tmp_path_factory.mktemp("demo") / "demo.html"
    done = subprocess.run([sys.executable, "-m", "kernel_fx.cli", "demo", "--layers", "1", "--without", "SiluAndMul",
                           "--json", "--html", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return out, json.loads(done.stdout)


@pytest.fixture(scope="module")
def browser():
    executable = chromium()
    if executable is None:
        pytest.skip("Chromium is not installed and scripts/install_chromium.sh could not install it here "
                    "(it needs root or passwordless sudo, apt-get and a Debian mirror); set KERNEL_FX_CHROMIUM to a Chromium binary")
    with sync_api.sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, demo):
    """The demo page, loaded from disk, with everything the console said (errors must be none)."""
    tab = browser.new_page(viewport={"width": 1280, "height": 860})
    problems: list[str] = []
    tab.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    tab.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    tab.on("request", lambda r: problems.append(f"request: {r.url}") if not r.url.startswith("file://") else None)
    tab.goto(demo[0].as_uri())
    yield tab
    tab.close()
    assert problems == []


def visible_rows(page):
    return page.locator("table.sites tbody tr:visible")


def test_table_has_a_row_per_site_decision_and_the_script_ran(page, demo):
    decisions = [d for report in demo[1]["reports"].values() for d in report["decisions"]]
    assert len(decisions) == 12  # 6 sites of one layer plus the final norm, eager and compiled
    assert page.locator("table.sites tbody tr").count() == len(decisions)
    assert visible_rows(page).count() == len(decisions)
    assert page.locator(".filters .shown").inner_text() == f"{len(decisions)} of {len(decisions)} rows"


def test_filtering_by_a_reason_shows_only_those_rows(page, demo):
    expected = [d for r in demo[1]["reports"].values() for d in r["decisions"] if d["rejected"] and d["rejected"]["reason"] == "no mapping"]
    assert len(expected) == 2
    page.select_option('select[data-filter="reason"]', "no mapping")
    shown = visible_rows(page)
    assert shown.count() == len(expected)
    assert {shown.nth(i).get_attribute("data-reason") for i in range(shown.count())} == {"no mapping"}
    assert all("layers.0.mlp.act" in shown.nth(i).inner_text() for i in range(shown.count()))
    page.select_option('select[data-filter="reason"]', "")
    page.select_option('select[data-filter="outcome"]', "kernel")
    assert visible_rows(page).count() == 10
    page.fill('input[data-filter="text"]', "rotary")
    assert visible_rows(page).count() == 2


def test_sorting_by_a_column(page):
    page.click("table.sites thead button:text-is('site')")
    first = page.locator("table.sites tbody tr").first.inner_text()
    page.click("table.sites thead button:text-is('site')")
    assert page.locator("table.sites tbody tr").first.inner_text() != first
    assert page.locator("table.sites thead th[aria-sort='descending']").count() == 1


def test_a_collapsed_diff_expands_on_click_and_shows_the_kernels_ops(page, demo):
    diffs = demo[1]["reports"]["hubkernels"]["graphs"][0]["site_diffs"]
    first = page.locator("details.diff").first
    assert page.locator("details.diff").count() == len(diffs) and len(diffs) == 5  # SiluAndMul kept the original
    assert first.get_attribute("open") is None and not first.locator("pre.after").is_visible()
    first.locator("summary").click()
    assert first.locator("pre.after").is_visible()
    assert first.locator("pre.after").inner_text().splitlines() == diffs[0]["after"]
    assert first.locator("pre.before").inner_text().splitlines() == diffs[0]["before"]


def test_timing_chart_has_one_bar_per_timed_variant(page, demo):
    runs = demo[1]["runs"]
    bars = page.locator("figure.timings svg rect.bar")
    assert bars.count() == len(runs) == 3
    labels = page.locator("figure.timings svg text.label").all_text_contents()
    assert labels == [r["name"] for r in runs]
    widths = [float(bars.nth(i).get_attribute("width")) for i in range(bars.count())]
    slowest = max(range(len(runs)), key=lambda i: runs[i]["median_ms"])
    assert widths[slowest] == max(widths) > 0


def test_screenshot(page, tmp_path):
    """A picture of the top of the page, with the fallback filtered: the README shows it."""
    page.select_option('select[data-filter="reason"]', "")
    shot = Path(os.environ.get("KERNEL_FX_SCREENSHOT") or tmp_path / "report-html.png")
    page.screenshot(path=str(shot), clip={"x": 0, "y": 0, "width": 1280, "height": 860})
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size < 300_000
