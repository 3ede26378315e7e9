"""Build variants of a kernel repo (`build/<variant>/`): parse, check against this system, choose.

Two namings are read, as Hugging Face `kernels` 0.19 reads them:

- legacy: `torch213-cxx11-cu130-x86_64-linux`, `torch-stable-abi212-cu130-x86_64-linux`
  (CPython 3.9+ and the abi3 ABI implied);
- dotted: `torch-2.13[-cxx11]-cuda-13.0-cpython-3.12-abi3-x86_64-linux`,
  `torch-stable-abi-2.12-cpu-cpython-3.10-abi3-aarch64-linux`, where an unversioned backend (cpu, metal,
  neuron, tpu) has no version part and `cpython-X.Y-abi3|abi3t` names the oldest CPython and its ABI;

and in both: noarch `torch-<backend>` (`torch-universal` for any backend), and SDKs without a
framework: `sdk`, `sdk-<backend>`, `sdk[-<backend>[-X.Y]]-cpython-X.Y-<abi>-<cpu>-<os>`.

>>> system = SystemInfo(torch=(2, 13), cxx11_abi=True, backend="cuda", backend_version=(13, 0),
...                     cpu="x86_64", os="linux")
>>> choice = choose_variant(["torch213-cxx11-cu130-x86_64-linux", "torch-universal"], system)
>>> choice.name
'torch213-cxx11-cu130-x86_64-linux'
>>> check_variant("torch212-cxx11-cu130-x86_64-linux", system).reason
'built for torch 2.12, this is torch 2.13'
>>> check_variant("torch-2.13-cuda-12.8-cpython-3.10-abi3-x86_64-linux", system).reason
'built for cuda 12.x, torch uses cuda 13.0'
"""

from __future__ import annotations

import platform
import re
import sys
import sysconfig
from dataclasses import dataclass

from .errors import NoVariantError

NOARCH_BACKENDS = ("cpu", "cuda", "rocm", "xpu", "metal", "neuron", "npu", "tpu")

_ARCH = re.compile(
    r"^torch(?P<stable>-stable-abi)?(?P<maj>\d)(?P<min>\d+)"
    r"(?:-(?P<abi>cxx11|cxx98))?-(?P<backend>[a-z]+)(?P<bver>[\d.]*)-(?P<cpu>[a-z0-9_]+)-(?P<os>[a-z]+)$"
)
_BACKEND_ALIASES = {
    "cu": "cuda", "cuda": "cuda", "rocm": "rocm", "xpu": "xpu", "cpu": "cpu", "metal": "metal", "mps": "metal",
    "neuron": "neuron", "npu": "npu", "cann": "npu", "tpu": "tpu",
}
# The dotted naming spells backends out; a versioned one is followed by its `X.Y` part.
_DOTTED_UNVERSIONED = {"cpu": "cpu", "metal": "metal", "neuron": "neuron", "tpu": "tpu"}
_DOTTED_VERSIONED = {"cuda": "cuda", "rocm": "rocm", "xpu": "xpu", "cann": "npu"}
_DOTTED = re.compile(r"^(\d+)\.(\d+)$")
_LEGACY_PYTHON = ((3, 9), "abi3")  # what a legacy name implies
_ABI3T_MIN_PYTHON = (3, 15)  # free-threaded stable ABI (PEP 803)


@dataclass(frozen=True)
class SystemInfo:
    """What a variant must fit: torch major.minor, C++ ABI, backend and its version, CPU, OS, CPython."""

    torch: tuple[int, int]
    cxx11_abi: bool
    backend: str
    backend_version: tuple[int, int] | None
    cpu: str
    os: str
    python: tuple[int, int] = (sys.version_info.major, sys.version_info.minor)
    free_threaded: bool = False

    def __str__(self) -> str:
        version = "" if self.backend_version is None else " " + ".".join(map(str, self.backend_version))
        abi = "cxx11" if self.cxx11_abi else "cxx98"
        threads = " free-threaded" if self.free_threaded else ""
        return (f"torch {self.torch[0]}.{self.torch[1]} ({abi}), backend {self.backend}{version}, {self.cpu}-{self.os}, "
                f"CPython {self.python[0]}.{self.python[1]}{threads}")


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
        free_threaded=bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
    )


def _torch_backend() -> tuple[str, tuple[int, int] | None]:
    """The backend torch runs on, in the order `kernels` 0.19 detects it (TPU and Neuron first:
    their extensions load into CUDA builds of torch)."""
    import torch

    accelerator = getattr(torch, "accelerator", None)
    current = accelerator.current_accelerator() if accelerator is not None else None
    if current is not None and current.type == "tpu":
        return "tpu", None
    if hasattr(torch, "neuron"):
        return "neuron", None
    if torch.version.cuda:
        return "cuda", _version_tuple(torch.version.cuda)
    if getattr(torch.version, "hip", None):
        return "rocm", _version_tuple(getattr(torch.version, "rocm", None) or torch.version.hip)
    if torch.backends.mps.is_available():
        return "metal", None
    if getattr(torch.version, "xpu", None):
        return "xpu", None
    if getattr(torch._C, "_get_privateuse1_backend_name", lambda: None)() == "npu":
        return "npu", None
    return "cpu", None


def _version_tuple(text: str) -> tuple[int, int]:
    parts = [int(p) for p in re.findall(r"\d+", text)[:2]]
    return (parts[0], parts[1] if len(parts) > 1 else 0)


@dataclass(frozen=True)
class Variant:
    """A parsed variant name.

    `kind` is "arch", "stable-abi", "noarch", "universal", "sdk" or "foreign" (a framework other
    than torch: tvm-ffi, MLX). `python` is the oldest CPython of a build with compiled parts and
    `python_abi` its ABI ("abi3" or "abi3t"); `backend` is None for a backend-agnostic SDK.
    """

    name: str
    kind: str
    backend: str | None
    torch: tuple[int, int] | None = None
    cxx11_abi: bool | None = None
    backend_version: tuple[int, int] | None = None
    cpu: str | None = None
    os: str | None = None
    python: tuple[int, int] | None = None
    python_abi: str | None = None
    dotted: bool = False


def parse_variant(name: str) -> Variant | None:
    """The `Variant` named `name`, or None when the name follows no known scheme.

    >>> v = parse_variant("torch-2.13-cxx11-cuda-12.8-cpython-3.12-abi3-x86_64-linux")
    >>> v.kind, v.torch, v.cxx11_abi, v.backend, v.backend_version, v.python, v.python_abi, v.cpu
    ('arch', (2, 13), True, 'cuda', (12, 8), (3, 12), 'abi3', 'x86_64')
    >>> parse_variant("sdk-cpython-3.12-abi3-x86_64-linux").backend is None
    True
    """
    parts = name.split("-")
    if parts[0] == "sdk":
        return _parse_sdk(name, parts[1:])
    if name.startswith("torch-stable-abi-"):
        return _parse_dotted(name, "stable-abi", parts[3:4], parts[4:])
    if name.startswith("torch-stable-abi"):
        return _parse_legacy(name)
    if parts[0] == "torch" and len(parts) > 1 and parts[1][:1].isdigit():
        tagged = len(parts) > 2 and parts[2] in ("cxx11", "cxx98")
        return _parse_dotted(name, "arch", parts[1:2], parts[3 if tagged else 2:], parts[2] if tagged else None)
    if name == "torch-universal":
        return Variant(name, "universal", "universal")
    if parts[0] == "torch" and len(parts) > 1:
        backend = _BACKEND_ALIASES.get("-".join(parts[1:]))
        return Variant(name, "noarch", backend) if backend in NOARCH_BACKENDS else None
    if parts[0] in ("tvm", "mlx"):
        return Variant(name, "foreign", None)
    return _parse_legacy(name)


def _parse_legacy(name: str) -> Variant | None:
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
        python=_LEGACY_PYTHON[0],
        python_abi=_LEGACY_PYTHON[1],
    )


def _parse_dotted(name: str, kind: str, torch_part: list[str], rest: list[str], abi_tag: str | None = None) -> Variant | None:
    """`<torch X.Y>[-cxx11]-<backend>[-X.Y]-cpython-X.Y-<abi>-<cpu>-<os>` (the parts after the framework)."""
    torch = _dotted(torch_part[0]) if torch_part else None
    compiled = _parse_compiled(rest)
    if torch is None or compiled is None or compiled[0] is None:
        return None
    (backend, backend_version), python, abi, cpu, os = compiled
    return Variant(name, kind, backend, torch=torch, cxx11_abi=None if abi_tag is None else abi_tag == "cxx11",
                   backend_version=backend_version, cpu=cpu, os=os, python=python, python_abi=abi, dotted=True)


def _parse_compiled(rest: list[str]) -> tuple | None:
    """`[<backend>[-X.Y]-]cpython-X.Y-<abi>-<cpu>-<os>` as ((backend, version) or None, python, abi, cpu, os)."""
    if len(rest) < 5 or "cpython" not in rest:
        return None
    i = rest.index("cpython")
    python_parts, system = rest[i:-2], rest[-2:]
    if len(python_parts) != 3 or _dotted(python_parts[1]) is None or python_parts[2] not in ("abi3", "abi3t"):
        return None
    python, abi = _dotted(python_parts[1]), python_parts[2]
    if abi == "abi3t" and python < _ABI3T_MIN_PYTHON:
        return None  # abi3t exists from CPython 3.15 on: the name is malformed
    backend = _parse_dotted_backend(rest[:i]) if rest[:i] else None
    if rest[:i] and backend is None:
        return None
    return backend, python, abi, system[0], system[1]


def _parse_dotted_backend(parts: list[str]) -> tuple[str, tuple[int, int] | None] | None:
    if len(parts) == 1 and parts[0] in _DOTTED_UNVERSIONED:
        return _DOTTED_UNVERSIONED[parts[0]], None
    if len(parts) == 2 and parts[0] in _DOTTED_VERSIONED and _dotted(parts[1]) is not None:
        return _DOTTED_VERSIONED[parts[0]], _dotted(parts[1])
    return None


def _parse_sdk(name: str, rest: list[str]) -> Variant | None:
    if not rest:
        return Variant(name, "sdk", None)
    if "cpython" not in rest:  # `sdk-<backend>`: no compiled parts, the backend by name only
        backend = _BACKEND_ALIASES.get(rest[0]) if len(rest) == 1 else None
        return Variant(name, "sdk", backend, dotted=True) if backend in NOARCH_BACKENDS else None
    compiled = _parse_compiled(rest)
    if compiled is None:
        return None
    backend, python, abi, cpu, os = compiled
    return Variant(name, "sdk", backend[0] if backend else None, backend_version=backend[1] if backend else None,
                   cpu=cpu, os=os, python=python, python_abi=abi, dotted=True)


def _dotted(text: str) -> tuple[int, int] | None:
    match = _DOTTED.match(text)
    return (int(match[1]), int(match[2])) if match else None


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


# Preference, highest first: arch, stable ABI, SDK with compiled parts, noarch, universal,
# SDK for a backend, backend-agnostic SDK.
_RANK = {"arch": 6, "stable-abi": 5, "sdk-compiled": 4, "noarch": 3, "universal": 2, "sdk-backend": 1, "sdk": 0}


def check_variant(name: str, system: SystemInfo) -> VariantCheck:
    """Accept `name` for `system`, with a rank (higher is preferred), or reject it with a reason."""
    variant = parse_variant(name)
    if variant is None:
        return VariantCheck(name, "unknown variant name scheme")
    if variant.kind == "foreign":
        framework = "MLX" if name.startswith("mlx") else "tvm-ffi"
        return VariantCheck(name, f"{framework} build; kernel_fx loads torch builds and SDKs")
    if variant.kind == "universal":
        return VariantCheck(name, None, (_RANK["universal"],))
    if variant.kind == "noarch":
        if variant.backend != system.backend:
            return VariantCheck(name, f"noarch build for backend {variant.backend}, this system uses {system.backend}")
        return VariantCheck(name, None, (_RANK["noarch"],))
    if variant.kind == "sdk":
        return _check_sdk(variant, system)
    reason = _python_mismatch(variant, system) or _arch_mismatch(variant, system)
    if reason:
        return VariantCheck(name, reason)
    minor = variant.backend_version[1] if variant.backend_version else 0
    python = _python_order(variant)
    if variant.kind == "arch":
        return VariantCheck(name, None, (_RANK["arch"], minor, variant.cxx11_abi is None, *python))
    return VariantCheck(name, None, (_RANK["stable-abi"], *variant.torch, minor, *python))  # the newest fitting stable ABI


def _check_sdk(variant: Variant, system: SystemInfo) -> VariantCheck:
    name = variant.name
    if variant.python is None:  # no compiled parts
        if variant.backend is not None and variant.backend != system.backend:
            return VariantCheck(name, f"SDK for backend {variant.backend}, this system uses {system.backend}")
        return VariantCheck(name, None, (_RANK["sdk-backend" if variant.backend else "sdk"],))
    reason = _python_mismatch(variant, system) or _system_mismatch(variant, system)
    if not reason and variant.backend is not None:
        if variant.backend != system.backend:
            reason = f"built for backend {variant.backend}, this system uses {system.backend}"
        else:
            reason = _backend_version_mismatch(variant, system)
    if reason:
        return VariantCheck(name, reason)
    minor = variant.backend_version[1] if variant.backend_version else 0
    return VariantCheck(name, None, (_RANK["sdk-compiled"], variant.backend is not None, minor, *_python_order(variant)))


def _python_order(variant: Variant) -> tuple[int, ...]:
    """abi3 before abi3t (a GIL interpreter prefers abi3), then the newer CPython."""
    assert variant.python is not None
    return (variant.python_abi == "abi3", *variant.python)


def _python_mismatch(variant: Variant, system: SystemInfo) -> str | None:
    assert variant.python is not None
    if variant.python_abi == "abi3" and system.free_threaded:
        return "built for the abi3 ABI, which free-threaded CPython cannot load (it needs abi3t)"
    if variant.python > system.python:
        return (f"built for CPython >= {variant.python[0]}.{variant.python[1]}, "
                f"this is CPython {system.python[0]}.{system.python[1]}")
    return None


def _system_mismatch(variant: Variant, system: SystemInfo) -> str | None:
    if variant.cpu != system.cpu:
        return f"built for CPU {variant.cpu}, this is {system.cpu}"
    if variant.os != system.os:
        return f"built for OS {variant.os}, this is {system.os}"
    return None


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
    return _backend_version_mismatch(variant, system) or _system_mismatch(variant, system)


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
