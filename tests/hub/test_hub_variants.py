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
