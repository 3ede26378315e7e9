"""Deploy with the kernels kept: `export` a program, `package` it with AOTInductor, `load_package` it."""

from __future__ import annotations

from .lock import KernelLock, PackageIntegrityError
from .program import ExportRecord, export, export_record

__all__ = ["ExportRecord", "KernelLock", "PackageIntegrityError", "export", "export_record"]
