"""kernel_fx: faster kernels from the Hugging Face Hub for PyTorch layers, eager and compiled."""

from __future__ import annotations

from .devices import CUDAProperties, Device, ROCMProperties
from .errors import KernelFxError, KernelizeError, KernelLoadError, KernelValidationError, MappingError
from .kernelize import kernelize, report, unkernelize
from .layers import (
    replace_kernel_forward_from_hub,
    use_kernel_forward_from_hub,
    use_kernelized_func,
)
from .mapping import register_kernel_mapping, use_kernel_mapping
from .modes import Mode
from .report import Decision, Outcome, Reason, Rejected, Report
from .repos import LayerRepository, LocalLayerRepository, LockedLayerRepository

__version__ = "0.1.0"

__all__ = [
    "CUDAProperties",
    "Decision",
    "Device",
    "KernelFxError",
    "KernelLoadError",
    "KernelValidationError",
    "KernelizeError",
    "LayerRepository",
    "LocalLayerRepository",
    "LockedLayerRepository",
    "MappingError",
    "Mode",
    "Outcome",
    "ROCMProperties",
    "Reason",
    "Rejected",
    "Report",
    "kernelize",
    "register_kernel_mapping",
    "replace_kernel_forward_from_hub",
    "report",
    "unkernelize",
    "use_kernel_forward_from_hub",
    "use_kernel_mapping",
    "use_kernelized_func",
]
