"""The quick-start notebook runs top to bottom, so it cannot rot."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", []))
    assert "kernel" in outputs and "site" in outputs
    assert "eager + kernelize" in outputs
    pages = [o["data"]["text/html"] for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
             if "text/html" in o.get("data", {})]
    assert any('class="kfx"' in page and '<tr class="site"' in page for page in pages)  # the report shown as HTML
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")
