"""The graph paths: the torch.compile backend — find sites (pure) -> decide (checks) -> apply
(the only mutator) -> inner compiler — and `graph_module` for a GraphModule.

`torch.compile(model, backend="hubkernels")` finds it through the `torch_dynamo_backends` entry
point. The names below load lazily: `import kernel_fx` must not import torch._dynamo.
"""

from __future__ import annotations

from typing import Any

__all__ = ["HubKernelsBackend", "hubkernels", "last_compile_report"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import backend

        return getattr(backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
