"""Builders of kernel repositories in the Hub layout, with plain-torch CPU kernels, for tests."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path

# Kernel layers used across the tests. Each reads attributes of the user's module via `self`.
SCALE_LAYERS = '''
import torch
from torch import nn

class Scale(nn.Module):
    """Computes the same as the test layer Scale: x * weight * factor, another way."""
    has_backward = {has_backward}
    can_torch_compile = {can_compile}

    def forward(self, x):
        return torch.mul(x, self.weight * self.factor)
'''

# A Scale kernel that counts its calls (module-level CALLS), so tests see which forward ran.
COUNTING_SCALE = '''
import torch
from torch import nn

CALLS = []

class Scale(nn.Module):
    has_backward = {has_backward}
    can_torch_compile = {can_compile}

    def forward(self, x):
        CALLS.append(1)
        return torch.mul(x, self.weight * self.factor)
'''

TWO_INPUT_LAYERS = '''
import torch
from torch import nn

class AddScaled(nn.Module):
    has_backward = True
    can_torch_compile = True

    def forward(self, x, y):
        return torch.add(x, y * self.alpha)
'''


def scale_layers(has_backward: bool = True, can_compile: bool = True) -> str:
    return SCALE_LAYERS.format(has_backward=has_backward, can_compile=can_compile)


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
