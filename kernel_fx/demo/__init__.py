"""A small Llama-style decoder whose layers are marked extensible, for demos and tests.

>>> from kernel_fx.demo import build_demo_model
>>> model = build_demo_model()
>>> model(torch.zeros(1, 8, dtype=torch.long)).shape
torch.Size([1, 8, 1000])
"""

from __future__ import annotations

import torch  # noqa: F401  (used by the doctest above)

from .model import (
    AddRMSNorm,
    ApplyRotary,
    Attention,
    DemoConfig,
    DemoModel,
    RMSNorm,
    SiluAndMul,
    build_demo_model,
)

__all__ = [
    "AddRMSNorm",
    "ApplyRotary",
    "Attention",
    "DemoConfig",
    "DemoModel",
    "RMSNorm",
    "SiluAndMul",
    "build_demo_model",
]
