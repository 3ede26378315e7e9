"""The name "hubkernels" for `torch.compile`, also where kernel_fx runs from a source tree.

An installed kernel_fx gives dynamo the name through its `torch_dynamo_backends` entry point, so
`torch.compile(model, backend="hubkernels")` works without importing kernel_fx. Run from a source tree
(`PYTHONPATH=.`, as on a machine without network) there is no entry point, and the string — also
transformers' `generate(..., compile_config=CompileConfig(backend="hubkernels"))` — failed with
`InvalidBackend`. After `import kernel_fx` it resolves either way:

- dynamo already imported: the entry point is added to its registry now;
- otherwise: once, right after dynamo's registry module is imported — `import kernel_fx` must not import
  dynamo itself (seconds of import time; see `__init__.py`).

What is added is the same entry point the package declares, never a loaded function: dynamo loads it on
first lookup, as it loads the declared one, so an installed kernel_fx (whose discovered entry point may
replace this one) never meets "duplicate name" (`register_backend` at import would, DESIGN.md §4).

    >>> import torch, kernel_fx
    >>> torch.compile(torch.nn.Identity(), backend="hubkernels")(torch.ones(2))
    tensor([1., 1.])
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from importlib.metadata import EntryPoint
from types import ModuleType

NAME = "hubkernels"
ENTRY_POINT = EntryPoint(name=NAME, value="kernel_fx.compile.backend:hubkernels", group="torch_dynamo_backends")
_REGISTRY = "torch._dynamo.backends.registry"


def add_name(registry: ModuleType) -> None:
    """Offer the backend to dynamo's registry under its name, unless a backend already holds it."""
    registry._BACKENDS.setdefault(NAME, ENTRY_POINT)


class _AfterRegistryImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of dynamo's registry so `add_name` runs after it."""

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname != _REGISTRY:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from finding us again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_add(module: ModuleType) -> None:
            exec_module(module)
            add_name(module)

        spec.loader.exec_module = exec_then_add  # type: ignore[method-assign]
        return spec


def offer_backend_name() -> None:
    """Make `backend="hubkernels"` resolve in this process (called once by `import kernel_fx`)."""
    registry = sys.modules.get(_REGISTRY)
    if registry is not None:
        add_name(registry)
    elif not any(isinstance(finder, _AfterRegistryImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterRegistryImport())
