"""Builders of kernel repositories in the Hub layout, for tests (the kernel sources are in models.py)."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path

from models import scale_source as scale_layers  # noqa: F401 - the name tests/hub imports the Scale kernel by


def make_kernel_repo(root: Path, variants: dict[str, dict[str, str]], *, kernel_id: str | None = None) -> Path:
    """Write `root/build/<variant>/<file>` for each variant; add `__init__.py` and `metadata.json`.

    `variants` maps a variant name to {file name: source}; `layers.py` becomes the `layers` submodule.
    """
    for variant, files in variants.items():
        vdir = root / "build" / variant
        vdir.mkdir(parents=True, exist_ok=True)
        files = dict(files)
        files.setdefault("__init__.py", "from . import layers\n")
        for name, source in files.items():
            (vdir / name).write_text(textwrap.dedent(source))
        if "metadata.json" not in files:
            backend = variant.split("-")[1] if variant.count("-") == 1 else "cpu"
            meta = {"id": kernel_id or f"test_kernel_{uuid.uuid4().hex[:8]}", "name": root.name, "version": 1,
                    "backend": {"type": backend}}
            (vdir / "metadata.json").write_text(json.dumps(meta))
    return root
