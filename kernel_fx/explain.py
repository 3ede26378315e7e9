"""`explain`: a dry run showing what eager and compiled kernelization would do; changes nothing.

>>> import torch
>>> from torch import nn
>>> import kernel_fx
>>> model = nn.Sequential(nn.Linear(4, 4))
>>> print(kernel_fx.explain(model, torch.randn(2, 4), compile=False).summary())
eager kernelize: 0 sites: 0 kernel, 0 original
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .report import Report


@dataclass
class Explanation:
    """The eager report, and (when example inputs were given) the compiled one."""

    eager: Report
    compiled: Report | None = None

    def summary(self) -> str:
        lines = [f"eager kernelize: {self.eager.summary()}"]
        if self.compiled is not None:
            lines.append(f"torch.compile hubkernels: {self.compiled.summary()}")
        return "\n".join(lines)

    def render(self, fmt: str = "text") -> str:
        parts = ["eager kernelize", self.eager.render(fmt)]
        if self.compiled is not None:
            parts += ["torch.compile(backend='hubkernels')", self.compiled.render(fmt)]
        return "\n\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"eager": self.eager.to_dict(), "compiled": None if self.compiled is None else self.compiled.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def __str__(self) -> str:
        return self.render()


def explain(
    model: nn.Module,
    *example_inputs: Any,
    device: str | torch.device | None = None,
    compile: bool = True,
    kernelize_kwargs: dict[str, Any] | None = None,
    **model_kwargs: Any,
) -> Explanation:
    """What `kernelize(model)` and `torch.compile(model, backend="hubkernels")` would do, on copies.

    The compiled dry run calls `model(*example_inputs, **model_kwargs)` once (e.g. `use_cache=True`,
    `attention_mask=...`) under `torch.no_grad()` with the inner compiler "eager", so it is cheap;
    `model` itself is never changed. `kernelize_kwargs` go to `kernelize` (`mode=`, `filter_fn=`, ...).
    """
    from .compile.backend import HubKernelsBackend
    from .eager.kernelize import kernelize, report

    eager_copy = copy.deepcopy(model)
    kernelize(eager_copy, device=device, **(kernelize_kwargs or {}))
    explanation = Explanation(report(eager_copy))
    if compile and (example_inputs or model_kwargs):
        backend = HubKernelsBackend(inner="eager", device=device)
        compiled = torch.compile(copy.deepcopy(model), backend=backend)
        with torch.no_grad():
            compiled(*example_inputs, **model_kwargs)
        explanation.compiled = backend.report
    return explanation
