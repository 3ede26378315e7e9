"""Build variants of a kernel repo (`build/<variant>/`): parse, check against this system, choose.

>>> system = SystemInfo(torch=(2, 13), cxx11_abi=True, backend="cuda", backend_version=(13, 0),
...                     cpu="x86_64", os="linux")
>>> choice = choose_variant(["torch213-cxx11-cu130-x86_64-linux", "torch-universal"], system)
>>> choice.name
'torch213-cxx11-cu130-x86_64-linux'
>>> check_variant("torch212-cxx11-cu130-x86_64-linux", system).reason
'built for torch 2.12, this is torch 2.13'
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass

from .errors import NoVariantError

NOARCH_BACKENDS = ("cpu", "cuda", "rocm", "xpu", "metal", "neuron", "npu")

_ARCH = re.compile(
    r"^torch(?P<stable>-stable-abi)?(?P<maj>\d)(?P<min>\d+)"
    r"(?:-(?P<abi>cxx11|cxx98))?-(?P<backend>[a-z]+)(?P<bver>[\d.]*)-(?P<cpu>[a-z0-9_]+)-(?P<os>[a-z]+)$"
)
_BACKEND_ALIASES = {
    "cu": "cuda", "cuda": "cuda", "rocm": "rocm", "xpu": "xpu", "cpu": "cpu", "metal": "metal", "mps": "metal",
    "neuron": "neuron", "npu": "npu", "cann": "npu",
}


@dataclass(frozen=True)
class SystemInfo:
    """What a variant must fit: torch major.minor, C++ ABI, backend and its version, CPU, OS."""

    torch: tuple[int, int]
    cxx11_abi: bool
    backend: str
    backend_version: tuple[int, int] | None
    cpu: str
    os: str

    def __str__(self) -> str:
        version = "" if self.backend_version is None else " " + ".".join(map(str, self.backend_version))
        abi = "cxx11" if self.cxx11_abi else "cxx98"
        return f"torch {self.torch[0]}.{self.torch[1]} ({abi}), backend {self.backend}{version}, {self.cpu}-{self.os}"


def system_info(backend: str | None = None) -> SystemInfo:
    """This process's `SystemInfo`; `backend` (e.g. "cpu" for a CPU model) overrides torch's build."""
    import torch

    major, minor = (int(p) for p in torch.__version__.split(".")[:2])
    build_backend, build_version = _torch_backend()
    backend = backend or build_backend
    if backend == "mps":
        backend = "metal"
    version = build_version if backend == build_backend else None
    return SystemInfo(
        torch=(major, minor),
        cxx11_abi=bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True)),
        backend=backend,
        backend_version=version,
        cpu=platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64"),
        os=platform.system().lower(),
    )


def _torch_backend() -> tuple[str, tuple[int, int] | None]:
    import torch

    if torch.version.cuda:
        return "cuda", _version_tuple(torch.version.cuda)
    if getattr(torch.version, "hip", None):
        return "rocm", _version_tuple(torch.version.hip)
    if getattr(torch.version, "xpu", None):
        return "xpu", None
    return "cpu", None


def _version_tuple(text: str) -> tuple[int, int]:
    parts = [int(p) for p in re.findall(r"\d+", text)[:2]]
    return (parts[0], parts[1] if len(parts) > 1 else 0)


@dataclass(frozen=True)
class Variant:
    """A parsed variant name. `kind` is "arch", "stable-abi", "noarch" or "universal"."""

    name: str
    kind: str
    backend: str
    torch: tuple[int, int] | None = None
    cxx11_abi: bool | None = None
    backend_version: tuple[int, int] | None = None
    cpu: str | None = None
    os: str | None = None


def parse_variant(name: str) -> Variant | None:
    """The `Variant` named `name`, or None when the name follows no known scheme."""
    if name == "torch-universal":
        return Variant(name, "universal", "universal")
    if name.startswith("torch-") and _BACKEND_ALIASES.get(name[len("torch-"):]) in NOARCH_BACKENDS:
        return Variant(name, "noarch", _BACKEND_ALIASES[name[len("torch-"):]])
    match = _ARCH.match(name)
    if match is None:
        return None
    backend = _BACKEND_ALIASES.get(match["backend"])
    if backend is None:
        return None
    return Variant(
        name,
        "stable-abi" if match["stable"] else "arch",
        backend,
        torch=(int(match["maj"]), int(match["min"])),
        cxx11_abi=None if match["abi"] is None else match["abi"] == "cxx11",
        backend_version=_backend_version(backend, match["bver"]),
        cpu=match["cpu"],
        os=match["os"],
    )


def _backend_version(backend: str, digits: str) -> tuple[int, int] | None:
    digits = digits.replace(".", "")
    if not digits:
        return None
    if backend == "cuda":  # cu130 -> 13.0, cu126 -> 12.6, cu92 -> 9.2
        return (int(digits[:-1]), int(digits[-1]))
    if backend == "rocm":  # rocm63 -> 6.3
        return (int(digits[0]), int(digits[1:] or 0))
    return (int(digits[:4]), int(digits[4:] or 0)) if len(digits) > 4 else (int(digits), 0)


@dataclass(frozen=True)
class VariantCheck:
    """One variant judged against a system: `reason` is None when it is accepted."""

    name: str
    reason: str | None
    rank: tuple[int, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.reason is None


def check_variant(name: str, system: SystemInfo) -> VariantCheck:
    """Accept `name` for `system`, with a rank (higher is preferred), or reject it with a reason."""
    variant = parse_variant(name)
    if variant is None:
        return VariantCheck(name, "unknown variant name scheme")
    if variant.kind == "universal":
        return VariantCheck(name, None, (0,))
    if variant.kind == "noarch":
        if variant.backend != system.backend:
            return VariantCheck(name, f"noarch build for backend {variant.backend}, this system uses {system.backend}")
        return VariantCheck(name, None, (1,))
    reason = _arch_mismatch(variant, system)
    if reason:
        return VariantCheck(name, reason)
    minor = variant.backend_version[1] if variant.backend_version else 0
    if variant.kind == "arch":
        return VariantCheck(name, None, (3, minor))
    return VariantCheck(name, None, (2, *variant.torch, minor))  # the newest fitting stable-ABI build


def _arch_mismatch(variant: Variant, system: SystemInfo) -> str | None:
    assert variant.torch is not None
    tmaj, tmin = variant.torch
    if variant.kind == "arch" and variant.torch != system.torch:
        return f"built for torch {tmaj}.{tmin}, this is torch {system.torch[0]}.{system.torch[1]}"
    if variant.kind == "stable-abi" and (tmaj, tmin) > system.torch:
        return f"stable-ABI build needs torch >= {tmaj}.{tmin}, this is torch {system.torch[0]}.{system.torch[1]}"
    if variant.kind == "arch" and variant.cxx11_abi is not None and variant.cxx11_abi != system.cxx11_abi:
        return f"built with the {'cxx11' if variant.cxx11_abi else 'cxx98'} C++ ABI, torch uses the other one"
    if variant.backend != system.backend:
        return f"built for backend {variant.backend}, this system uses {system.backend}"
    reason = _backend_version_mismatch(variant, system)
    if reason:
        return reason
    if variant.cpu != system.cpu:
        return f"built for CPU {variant.cpu}, this is {system.cpu}"
    if variant.os != system.os:
        return f"built for OS {variant.os}, this is {system.os}"
    return None


def _backend_version_mismatch(variant: Variant, system: SystemInfo) -> str | None:
    """CUDA: same major, minor not above the system's (CUDA minor versions are compatible upward).
    Other versioned backends (ROCm, XPU, ...): the exact version."""
    if not variant.backend_version or not system.backend_version:
        return None
    (vmaj, vmin), (smaj, smin) = variant.backend_version, system.backend_version
    name = variant.backend
    if name == "cuda":
        if vmaj != smaj:
            return f"built for cuda {vmaj}.x, torch uses cuda {smaj}.{smin}"
        if vmin > smin:
            return f"built for cuda {vmaj}.{vmin}, newer than torch's cuda {smaj}.{smin}"
        return None
    if (vmaj, vmin) != (smaj, smin):
        return f"built for {name} {vmaj}.{vmin}, torch uses {name} {smaj}.{smin}"
    return None


def check_variants(names: list[str], system: SystemInfo) -> list[VariantCheck]:
    """Every variant in `names`, judged; the preferred accepted one first, rejected ones last."""
    checks = [check_variant(n, system) for n in sorted(set(names))]
    return sorted(checks, key=lambda c: (not c.accepted, tuple(-r for r in c.rank), c.name))


def choose_variant(names: list[str], system: SystemInfo, *, where: str = "kernel repo") -> VariantCheck:
    """The preferred accepted variant, or a `NoVariantError` listing every variant with its reason."""
    checks = check_variants(names, system)
    if checks and checks[0].accepted:
        return checks[0]
    listing = "; ".join(f"{c.name}: {c.reason}" for c in checks) or "the repo has no build/ variants"
    raise NoVariantError(f"No build variant of {where} fits this system ({system}). Variants: {listing}.")
