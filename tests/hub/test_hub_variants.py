"""Variant rules (DESIGN §2): what fits a system, what is preferred, and why the rest is rejected."""

from __future__ import annotations

import pytest

from kernel_fx.hub.errors import NoVariantError
from kernel_fx.hub.variants import SystemInfo, check_variant, check_variants, choose_variant, parse_variant, system_info

CUDA_130 = SystemInfo(torch=(2, 13), cxx11_abi=True, backend="cuda", backend_version=(13, 0), cpu="x86_64", os="linux")
CUDA_126 = SystemInfo(torch=(2, 13), cxx11_abi=True, backend="cuda", backend_version=(12, 6), cpu="x86_64", os="linux")
ROCM_63 = SystemInfo(torch=(2, 13), cxx11_abi=True, backend="rocm", backend_version=(6, 3), cpu="x86_64", os="linux")
CPU = SystemInfo(torch=(2, 13), cxx11_abi=True, backend="cpu", backend_version=None, cpu="x86_64", os="linux")
MAC = SystemInfo(torch=(2, 13), cxx11_abi=False, backend="metal", backend_version=None, cpu="aarch64", os="darwin")


@pytest.mark.parametrize(
    "system, name",
    [
        (CUDA_130, "torch213-cxx11-cu130-x86_64-linux"),
        (CUDA_126, "torch213-cxx11-cu126-x86_64-linux"),
        (CUDA_126, "torch213-cxx11-cu124-x86_64-linux"),  # older CUDA minor: compatible
        (ROCM_63, "torch213-cxx11-rocm63-x86_64-linux"),
        (CPU, "torch213-cxx11-cpu-x86_64-linux"),
        (MAC, "torch213-metal-aarch64-darwin"),  # no ABI tag outside Linux
        (CUDA_130, "torch-stable-abi212-cxx11-cu130-x86_64-linux"),  # stable ABI: older torch is fine
        (CUDA_130, "torch-stable-abi213-cu130-x86_64-linux"),
        (CUDA_130, "torch-cuda"),
        (CPU, "torch-cpu"),
        (MAC, "torch-metal"),
        (MAC, "torch-mps"),  # older spelling of the metal backend
        (CPU, "torch-universal"),
        (CUDA_130, "torch-universal"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_accepted(system, name):
    assert check_variant(name, system).accepted


@pytest.mark.parametrize(
    "system, name, reason",
    [
        (CUDA_130, "torch212-cxx11-cu130-x86_64-linux", "built for torch 2.12, this is torch 2.13"),
        (CUDA_130, "torch214-cxx11-cu130-x86_64-linux", "built for torch 2.14, this is torch 2.13"),
        (CUDA_130, "torch213-cxx98-cu130-x86_64-linux", "built with the cxx98 C++ ABI, torch uses the other one"),
        (CUDA_130, "torch213-cxx11-cu126-x86_64-linux", "built for cuda 12.x, torch uses cuda 13.0"),
        (CUDA_126, "torch213-cxx11-cu128-x86_64-linux", "built for cuda 12.8, newer than torch's cuda 12.6"),
        (ROCM_63, "torch213-cxx11-rocm64-x86_64-linux", "built for rocm 6.4, torch uses rocm 6.3"),
        (CPU, "torch213-cxx11-cu130-x86_64-linux", "built for backend cuda, this system uses cpu"),
        (CUDA_130, "torch213-cxx11-cu130-aarch64-linux", "built for CPU aarch64, this is x86_64"),
        (CUDA_130, "torch213-cxx11-cu130-x86_64-windows", "built for OS windows, this is linux"),
        (CUDA_130, "torch-stable-abi214-cxx11-cu130-x86_64-linux", "stable-ABI build needs torch >= 2.14, this is torch 2.13"),
        (CPU, "torch-cuda", "noarch build for backend cuda, this system uses cpu"),
        (CUDA_130, "torch-cpu", "noarch build for backend cpu, this system uses cuda"),
        (CPU, "torch-fortran", "unknown variant name scheme"),
        (CPU, "README", "unknown variant name scheme"),
    ],
    ids=lambda v: v if isinstance(v, str) and v.startswith(("torch", "README")) else None,
)
def test_rejected_with_reason(system, name, reason):
    check = check_variant(name, system)
    assert not check.accepted
    assert check.reason == reason


def test_preference_arch_then_stable_abi_then_noarch_then_universal():
    names = ["torch-universal", "torch-cuda", "torch-stable-abi212-cu130-x86_64-linux", "torch213-cxx11-cu130-x86_64-linux"]
    accepted = [c.name for c in check_variants(names, CUDA_130)]
    assert accepted == [
        "torch213-cxx11-cu130-x86_64-linux",
        "torch-stable-abi212-cu130-x86_64-linux",
        "torch-cuda",
        "torch-universal",
    ]


def test_highest_compatible_cuda_minor_and_newest_stable_abi_win():
    assert choose_variant(["torch213-cxx11-cu124-x86_64-linux", "torch213-cxx11-cu126-x86_64-linux",
                           "torch213-cxx11-cu128-x86_64-linux"], CUDA_126).name == "torch213-cxx11-cu126-x86_64-linux"
    assert choose_variant(["torch-stable-abi210-cu130-x86_64-linux", "torch-stable-abi212-cu130-x86_64-linux"],
                          CUDA_130).name == "torch-stable-abi212-cu130-x86_64-linux"


def test_rejected_variants_sort_after_accepted_ones():
    checks = check_variants(["torch-cuda", "torch-cpu", "torch-universal"], CPU)
    assert [c.accepted for c in checks] == [True, True, False]


def test_no_variant_error_lists_every_variant_and_the_system():
    names = ["torch212-cxx11-cu130-x86_64-linux", "torch-cuda", "weird"]
    with pytest.raises(NoVariantError) as info:
        choose_variant(names, CPU, where="kernel repo org/k@main")
    message = str(info.value)
    assert "kernel repo org/k@main" in message
    assert "torch 2.13 (cxx11), backend cpu, x86_64-linux" in message  # torch, backend, CPU and OS
    for name, reason in [
        ("torch212-cxx11-cu130-x86_64-linux", "built for torch 2.12, this is torch 2.13"),
        ("torch-cuda", "noarch build for backend cuda, this system uses cpu"),
        ("weird", "unknown variant name scheme"),
    ]:
        assert f"{name}: {reason}" in message


def test_no_variant_error_for_an_empty_build_dir():
    with pytest.raises(NoVariantError, match="the repo has no build/ variants"):
        choose_variant([], CPU)


def test_parse_arch_variant():
    v = parse_variant("torch213-cxx11-cu130-x86_64-linux")
    assert (v.kind, v.torch, v.cxx11_abi, v.backend, v.backend_version, v.cpu, v.os) == (
        "arch", (2, 13), True, "cuda", (13, 0), "x86_64", "linux")
    assert parse_variant("torch-stable-abi29-cu128-aarch64-linux").torch == (2, 9)


def test_system_info_of_this_process_and_backend_override():
    import torch

    here = system_info()
    assert here.torch == tuple(int(p) for p in torch.__version__.split(".")[:2])
    assert system_info("cpu").backend == "cpu" and system_info("cpu").backend_version is None
    assert system_info("mps").backend == "metal"


# -- the dotted naming of kernels 0.19 (torch-2.13, cuda-12.8, cpython-3.12-abi3, sdk) ---------

PY312 = SystemInfo(torch=(2, 13), cxx11_abi=True, backend="cuda", backend_version=(12, 8), cpu="x86_64", os="linux",
                   python=(3, 12))
PY312_CPU = SystemInfo(torch=(2, 13), cxx11_abi=True, backend="cpu", backend_version=None, cpu="x86_64", os="linux",
                       python=(3, 12))
FREE_THREADED = SystemInfo(torch=(2, 13), cxx11_abi=True, backend="cpu", backend_version=None, cpu="x86_64",
                           os="linux", python=(3, 15), free_threaded=True)


@pytest.mark.parametrize(
    "system, name",
    [
        (PY312, "torch-2.13-cuda-12.8-cpython-3.12-abi3-x86_64-linux"),
        (PY312, "torch-2.13-cxx11-cuda-12.6-cpython-3.9-abi3-x86_64-linux"),  # older CUDA minor, older CPython
        (PY312_CPU, "torch-2.13-cpu-cpython-3.10-abi3-x86_64-linux"),
        (PY312, "torch-stable-abi-2.11-cuda-12.8-cpython-3.12-abi3-x86_64-linux"),
        (PY312, "sdk"),
        (PY312, "sdk-cuda"),
        (PY312, "sdk-cpython-3.12-abi3-x86_64-linux"),
        (PY312, "sdk-cuda-12.4-cpython-3.10-abi3-x86_64-linux"),
        (FREE_THREADED, "torch-2.13-cpu-cpython-3.15-abi3t-x86_64-linux"),
        (FREE_THREADED, "sdk-cpython-3.15-abi3t-x86_64-linux"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_dotted_names_accepted(system, name):
    assert check_variant(name, system).accepted


@pytest.mark.parametrize(
    "system, name, reason",
    [
        (PY312, "torch-2.12-cuda-12.8-cpython-3.12-abi3-x86_64-linux", "built for torch 2.12, this is torch 2.13"),
        (PY312, "torch-2.13-cxx98-cuda-12.8-cpython-3.12-abi3-x86_64-linux",
         "built with the cxx98 C++ ABI, torch uses the other one"),
        (PY312, "torch-2.13-cuda-13.0-cpython-3.12-abi3-x86_64-linux", "built for cuda 13.x, torch uses cuda 12.8"),
        (PY312, "torch-2.13-cuda-12.9-cpython-3.12-abi3-x86_64-linux", "built for cuda 12.9, newer than torch's cuda 12.8"),
        (PY312, "torch-2.13-cuda-12.8-cpython-3.13-abi3-x86_64-linux", "built for CPython >= 3.13, this is CPython 3.12"),
        (PY312, "torch-2.13-cuda-12.8-cpython-3.12-abi3-aarch64-linux", "built for CPU aarch64, this is x86_64"),
        (PY312, "torch-2.13-cpu-cpython-3.12-abi3-x86_64-linux", "built for backend cpu, this system uses cuda"),
        (PY312, "torch-stable-abi-2.14-cuda-12.8-cpython-3.12-abi3-x86_64-linux",
         "stable-ABI build needs torch >= 2.14, this is torch 2.13"),
        (FREE_THREADED, "torch-2.13-cpu-cpython-3.12-abi3-x86_64-linux",
         "built for the abi3 ABI, which free-threaded CPython cannot load (it needs abi3t)"),
        (PY312, "torch-2.13-cpu-cpython-3.15-abi3t-x86_64-linux", "built for CPython >= 3.15, this is CPython 3.12"),
        (PY312_CPU, "sdk-cuda", "SDK for backend cuda, this system uses cpu"),
        (PY312_CPU, "sdk-cuda-12.8-cpython-3.12-abi3-x86_64-linux", "built for backend cuda, this system uses cpu"),
        (PY312, "sdk-cpython-3.12-abi3-x86_64-windows", "built for OS windows, this is linux"),
        (PY312, "tvm-ffi-0.1-cuda-12.8-cpython-3.12-abi3-x86_64-linux", "tvm-ffi build; kernel_fx loads torch builds and SDKs"),
        (PY312, "mlx-metal", "MLX build; kernel_fx loads torch builds and SDKs"),
        # malformed: what kernels 0.19 refuses to parse
        (PY312, "torch-2.13-cuda-cpython-3.12-abi3-x86_64-linux", "unknown variant name scheme"),  # cuda needs X.Y
        (PY312, "torch-2.13-cu128-cpython-3.12-abi3-x86_64-linux", "unknown variant name scheme"),  # legacy backend
        (PY312, "torch-2.13-cuda-12.8-x86_64-linux", "unknown variant name scheme"),  # no cpython part
        (PY312, "torch-2.13-cpu-cpython-3.12-abi4-x86_64-linux", "unknown variant name scheme"),
        (PY312, "torch-2.13-cpu-cpython-3.12-abi3t-x86_64-linux", "unknown variant name scheme"),  # abi3t needs 3.15
        (PY312, "torch-2.x-cpu-cpython-3.12-abi3-x86_64-linux", "unknown variant name scheme"),
        (PY312, "sdk-cuda-12.8", "unknown variant name scheme"),
    ],
    ids=lambda v: v if isinstance(v, str) and v.startswith(("torch", "sdk", "tvm", "mlx")) else None,
)
def test_dotted_names_rejected_with_reason(system, name, reason):
    assert check_variant(name, system).reason == reason


def test_dotted_preference_arch_stable_abi_sdk_noarch_universal():
    names = [
        "sdk", "sdk-cuda", "torch-universal", "torch-cuda", "sdk-cpython-3.12-abi3-x86_64-linux",
        "sdk-cuda-12.8-cpython-3.12-abi3-x86_64-linux", "torch-stable-abi-2.12-cuda-12.8-cpython-3.12-abi3-x86_64-linux",
        "torch-2.13-cuda-12.6-cpython-3.12-abi3-x86_64-linux", "torch-2.13-cuda-12.8-cpython-3.10-abi3-x86_64-linux",
        "torch-2.13-cuda-12.8-cpython-3.12-abi3-x86_64-linux",
    ]
    assert [c.name for c in check_variants(names, PY312)] == [
        "torch-2.13-cuda-12.8-cpython-3.12-abi3-x86_64-linux",  # highest CUDA minor, then the newest CPython
        "torch-2.13-cuda-12.8-cpython-3.10-abi3-x86_64-linux",
        "torch-2.13-cuda-12.6-cpython-3.12-abi3-x86_64-linux",
        "torch-stable-abi-2.12-cuda-12.8-cpython-3.12-abi3-x86_64-linux",
        "sdk-cuda-12.8-cpython-3.12-abi3-x86_64-linux",  # an SDK for the backend before a backend-agnostic one
        "sdk-cpython-3.12-abi3-x86_64-linux",
        "torch-cuda",
        "torch-universal",
        "sdk-cuda",
        "sdk",
    ]


def test_legacy_and_dotted_names_of_one_build_parse_alike():
    legacy, dotted = parse_variant("torch213-cxx11-cu128-x86_64-linux"), parse_variant(
        "torch-2.13-cxx11-cuda-12.8-cpython-3.9-abi3-x86_64-linux")
    fields = ("kind", "torch", "cxx11_abi", "backend", "backend_version", "cpu", "os", "python", "python_abi")
    assert [getattr(legacy, f) for f in fields] == [getattr(dotted, f) for f in fields]
    assert parse_variant("torch-stable-abi-2.11-rocm-7.14-cpython-3.12-abi3-x86_64-linux").backend_version == (7, 14)
    assert parse_variant("torch-2.13-cann-8.1-cpython-3.12-abi3-aarch64-linux").backend == "npu"
    assert parse_variant("torch-2.13-tpu-cpython-3.12-abi3-x86_64-linux").backend == "tpu"


def test_legacy_names_are_cpython_39_abi3_and_refused_by_free_threaded_python():
    assert parse_variant("torch213-cxx11-cpu-x86_64-linux").python == (3, 9)
    assert check_variant("torch213-cxx11-cpu-x86_64-linux", FREE_THREADED).reason == (
        "built for the abi3 ABI, which free-threaded CPython cannot load (it needs abi3t)")
