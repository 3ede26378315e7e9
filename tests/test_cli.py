"""The kernel-fx command end to end, in subprocesses."""

import json
import subprocess
import sys

import pytest


def kernel_fx(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "kernel_fx.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("command", [[], ["demo"], ["report"], ["export"], ["variants"], ["lock"], ["download"]], ids=lambda c: c[0] if c else "top")
def test_help(command):
    out = kernel_fx(*command, "--help")
    assert out.returncode == 0 and "usage: kernel-fx" in out.stdout


def test_demo_runs_checks_and_reports():
    out = kernel_fx("demo", "--layers", "1")
    assert out.returncode == 0, out.stderr
    assert "[kernel-fx] compiling" in out.stderr
    assert "== kernelize report ==" in out.stdout and "== hubkernels report ==" in out.stdout
    assert "eager + kernelize" in out.stdout and "torch.compile hubkernels" in out.stdout
    assert out.stdout.count("6 sites: 6 kernel, 0 original") == 2  # 1 layer: 5 extensible calls + the final norm
    assert "nodes removed" in out.stdout


def test_demo_json_without_compile():
    out = kernel_fx("demo", "--layers", "1", "--no-compile", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert [r["name"] for r in data["runs"]] == ["eager", "eager + kernelize"]
    assert data["reports"]["kernelize"]["summary"].startswith("6 sites: 6 kernel")


def test_report_on_a_model_function_with_compile():
    out = kernel_fx("report", "kernel_fx.demo.run:demo_example", "--compile")
    assert out.returncode == 0, out.stderr
    assert "eager kernelize" in out.stdout and "torch.compile(backend='hubkernels')" in out.stdout


def test_report_json_and_bad_target():
    out = kernel_fx("report", "kernel_fx.demo.run:demo_example", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["eager"]["summary"].startswith("11 sites")
    bad = kernel_fx("report", "no_colon_here")
    assert bad.returncode != 0 and "is not MODULE:NAME" in bad.stderr


def test_demo_without_an_unknown_layer_names_the_bundled_ones():
    out = kernel_fx("demo", "--layers", "1", "--no-compile", "--without", "Nope")
    assert out.returncode != 0
    assert "Cannot leave out 'Nope': not a bundled layer (bundled layers: RMSNorm, SiluAndMul, AddRMSNorm, ApplyRotary, Attention)." in out.stderr
