"""Does a build support this device's architecture? The metadata's `backend.archs` against the GPU.

As in Hugging Face `kernels` 0.19 (`check_arch=True`, the default): a CUDA build lists compute
capabilities — `9.0` runs on 9.x with x >= 0, `9.0a` only on 9.0, `10.0f` on 10.x with x >= 0,
`8.0+PTX` on 8.0 and anything newer; a ROCm build lists gfx names. Without archs, without the
device, or when no listed arch is in a known format, the build counts as supported.

>>> supports_cuda(["8.0", "9.0a"], (8, 6)), supports_cuda(["9.0a"], (9, 1)), supports_cuda(["8.0+PTX"], (12, 0))
(True, False, True)
>>> supports_cuda(["sm_90-from-a-newer-builder"], (7, 5))
True
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .errors import UnsupportedArchError

_CUDA_ARCH = re.compile(r"^(\d+)\.(\d+)([af]?)(\+PTX)?$")


def supports_cuda(archs: list[str], capability: tuple[int, int]) -> bool:
    """Whether any of the CUDA `archs` runs on a device of compute `capability`."""
    verdicts = [_cuda_arch_runs(arch, capability) for arch in archs]
    if all(v is None for v in verdicts):
        return True  # none in a format we know: the build may well support the device
    return any(verdicts)


def _cuda_arch_runs(arch: str, capability: tuple[int, int]) -> bool | None:
    match = _CUDA_ARCH.match(arch)
    if match is None:
        return None
    built = (int(match[1]), int(match[2]))
    if match[3] == "a":  # architecture-specific: that capability only
        return capability == built
    if match[4] and not match[3]:  # PTX is compiled for the device at load: any newer capability
        return capability >= built
    return capability[0] == built[0] and capability[1] >= built[1]


def arch_problem(metadata: Mapping) -> str | None:
    """Why the build cannot run on the current device, or None."""
    backend = metadata.get("backend")
    archs = backend.get("archs") if isinstance(backend, Mapping) else None
    if not archs or not isinstance(archs, list):
        return None
    import torch

    kind = backend.get("type")
    if kind == "cuda" and torch.version.cuda and torch.cuda.is_available():
        capability = torch.cuda.get_device_capability()
        if not supports_cuda([str(a) for a in archs], capability):
            return f"CUDA capability {capability[0]}.{capability[1]} of this device is not among the build's archs: {', '.join(archs)}"
    if kind == "rocm" and getattr(torch.version, "hip", None) and torch.cuda.is_available():
        gfx = torch.cuda.get_device_properties(torch.cuda.current_device()).gcnArchName.split(":")[0]
        if gfx not in archs:
            return f"ROCm arch {gfx} of this device is not among the build's archs: {', '.join(archs)}"
    return None


def check_arch(metadata: Mapping, *, where: object) -> None:
    """Raise `UnsupportedArchError` unless the build supports the current device."""
    problem = arch_problem(metadata)
    if problem:
        raise UnsupportedArchError(
            f"Kernel {where} does not support this device: {problem}. The declared archs can be incomplete (a kernel "
            "with a Triton fallback, say); pass check_arch=False to load it anyway, at the risk of a failure or crash at run time."
        )
