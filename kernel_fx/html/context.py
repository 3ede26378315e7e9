"""What a page says about the run around the sites: library versions, and the kernel mapping used.

The mapping comes from the caller when it knows it (the demo passes the one it ran with), else the
mapping in scope when the page is rendered, else what the decisions themselves name (layer, device,
mode, repository), so a page rendered after the `use_kernel_mapping` block still shows something true.

>>> rows, source = mapping_rows({"RMSNorm": {"cpu": "org/rms@v1"}}, [])
>>> rows, source
([('RMSNorm', 'cpu', 'FALLBACK', 'org/rms@v1')], 'as passed to the report')
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Mapping, Sequence
from html import escape
from importlib import metadata
from typing import Any

from ..decisions import Decision
from ..mapping import current_mapping
from ..planner import repository_label

# Only metadata is read: importing transformers to learn its version would cost seconds.
PACKAGES = (("torch", "torch"), ("kernel_fx", "kernel-fx"), ("transformers", "transformers"),
            ("huggingface_hub", "huggingface_hub"), ("kernels", "kernels"), ("triton", "triton"))


def versions() -> list[tuple[str, str]]:
    """`(name, version)` for Python and each installed package of `PACKAGES` (absent ones left out)."""
    found = [("python", platform.python_version())]
    for name, dist in PACKAGES:
        try:
            found.append((name, metadata.version(dist)))
        except metadata.PackageNotFoundError:
            continue
    torch = sys.modules.get("torch")
    if torch is not None:  # the imported build (e.g. 2.13.0+cpu) rather than the wheel's metadata
        found = [(n, str(torch.__version__) if n == "torch" else v) for n, v in found]
    return found


def _label(repo: Any) -> str:
    return repo if isinstance(repo, str) else repository_label(repo)


def mapping_rows(mapping: Mapping[str, Any] | None, decisions: Sequence[Decision]) -> tuple[list[tuple[str, str, str, str]], str]:
    """`(layer, device, mode, repository)` rows of the mapping, and where they came from."""
    source = "as passed to the report"
    if mapping is None:
        mapping, source = current_mapping(), "in scope when the page was rendered"
    if mapping:
        rows = []
        for layer, devices in sorted(mapping.items()):
            for device, entry in devices.items():
                modes = entry.items() if isinstance(entry, Mapping) else [("FALLBACK", entry)]
                rows += [(layer, str(device), str(mode), _label(repo)) for mode, repo in modes]
        return rows, source
    named = {(d.layer_name, d.device, d.mode, d.repository) for d in decisions if d.repository}
    return sorted(named), "no mapping was given or in scope: the repositories the decisions name"


def context_section(mapping: Mapping[str, Any] | None, decisions: Sequence[Decision]) -> str:
    """Versions and the mapping, as two small tables."""
    vers = "".join(f"<tr><td>{escape(n)}</td><td>{escape(v)}</td></tr>" for n, v in versions())
    rows, source = mapping_rows(mapping, decisions)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    table = (f'<table class="mapping"><thead><tr><th>layer</th><th>device</th><th>mode</th><th>repository</th></tr></thead>'
             f"<tbody>{body}</tbody></table>") if rows else "<p>(empty)</p>"
    return (f'<section class="context"><div><h2>versions</h2><table class="versions"><tbody>{vers}</tbody></table></div>'
            f'<div><h2>mapping</h2><p class="note">{escape(source)}</p>{table}</div></section>')
