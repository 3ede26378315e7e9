"""kernel_fx: faster kernels from the Hugging Face Hub for PyTorch layers, eager and compiled."""

from __future__ import annotations

from .checks.verification import Tolerance, Verify
from .compile.backend_name import offer_backend_name
from .decisions import Decision, KernelizeFallback, Measured, Outcome, Reason, Rejected
from .defaults import default_mapping
from .deploy import ExportRecord, export, export_record
from .deploy.package import DeployedModel, load_package, package
from .devices import CUDAProperties, Device, ROCMProperties
from .eager.inspect_layers import KernelizedFunc, KernelizedLayer, KernelizedLayers, get_kernelized_layers
from .eager.kernelize import kernelize, report, unkernelize
from .errors import (
    KernelFallbackWarning,
    KernelFxError,
    KernelizeError,
    KernelLoadError,
    KernelValidationError,
    LayerNotFoundError,
    MappingError,
    SettingError,
)
from .explain import Explanation, explain
from .hub.api import get_kernel, get_kernel_variants, get_local_kernel, get_locked_kernel, has_kernel, load_kernel
from .hub.deps import get_kernel_dep
from .layers import (
    replace_kernel_forward_from_hub,
    use_kernel_forward_from_hub,
    use_kernel_func_from_hub,
    use_kernelized_func,
)
from .mapping import register_kernel_mapping, use_kernel_mapping
from .modes import Mode
from .report import Report
from .repos import (
    FuncRepository,
    LayerRepository,
    LocalFuncRepository,
    LocalLayerRepository,
    LockedFuncRepository,
    LockedLayerRepository,
)

__version__ = "0.1.0"

# `backend="hubkernels"` resolves after `import kernel_fx` also without the entry point (a source tree).
offer_backend_name()

# The compiled path loads on first use: it imports torch._dynamo, which `import kernel_fx` must not.
_COMPILE_EXPORTS = ("HubKernelsBackend", "hubkernels", "last_compile_report")


def __getattr__(name: str):
    if name in _COMPILE_EXPORTS:
        from .compile import backend

        return getattr(backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CUDAProperties",
    "Decision",
    "DeployedModel",
    "Device",
    "Explanation",
    "ExportRecord",
    "FuncRepository",
    "HubKernelsBackend",
    "KernelFallbackWarning",
    "KernelFxError",
    "KernelLoadError",
    "KernelValidationError",
    "KernelizeError",
    "KernelizeFallback",
    "Measured",
    "KernelizedFunc",
    "KernelizedLayer",
    "KernelizedLayers",
    "LayerNotFoundError",
    "LayerRepository",
    "LocalFuncRepository",
    "LocalLayerRepository",
    "LockedFuncRepository",
    "LockedLayerRepository",
    "MappingError",
    "Mode",
    "Outcome",
    "ROCMProperties",
    "Reason",
    "Tolerance",
    "Verify",
    "Rejected",
    "Report",
    "SettingError",
    "default_mapping",
    "explain",
    "export",
    "export_record",
    "get_kernel",
    "get_kernel_dep",
    "get_kernel_variants",
    "get_kernelized_layers",
    "get_local_kernel",
    "get_locked_kernel",
    "has_kernel",
    "hubkernels",
    "kernelize",
    "last_compile_report",
    "load_kernel",
    "load_package",
    "package",
    "register_kernel_mapping",
    "replace_kernel_forward_from_hub",
    "report",
    "unkernelize",
    "use_kernel_forward_from_hub",
    "use_kernel_func_from_hub",
    "use_kernel_mapping",
    "use_kernelized_func",
]
