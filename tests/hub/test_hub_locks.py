"""Lock files: `kernel-fx lock`, `kernel-fx download`, load_kernel and LockedLayerRepository."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import textwrap

import pytest
import torch
from hub_helpers import cli
from torch import nn

import kernel_fx
from kernel_fx import LockedLayerRepository, kernelize, load_kernel
from kernel_fx.hub.errors import KernelIntegrityError, LockfileError, NotCachedError
from kernel_fx.hub.importer import source_of
from kernel_fx.hub.locks import find_lockfile, read_lockfile

REPO = "stranger/scale"  # untrusted: a lock is enough to load it
ARCH = "torch{}{}-cxx11-cpu-x86_64-linux".format(*kernel_fx.hub.variants.system_info("cpu").torch)


@pytest.fixture
def project(tmp_path, publish, hub):
    """A project declaring REPO version 1 in its pyproject.toml; REPO has three variants."""
    commit = publish(REPO, {"torch-cpu": "v1-cpu", "torch-cuda": "v1-cuda", ARCH: "v1-arch"}, branch="v1")
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "pyproject.toml").write_text(textwrap.dedent(f"""
        [project]
        name = "demo"
        [tool.kernel_fx.kernels]
        "{REPO}" = {{ version = 1 }}
    """))
    return folder, commit


def _locked(project_dir):
    return read_lockfile(project_dir / "kernel-fx.lock")


def test_lock_records_commit_variant_and_every_file_hash(project, hub, capsys):
    folder, commit = project
    assert cli("lock", "--project", str(folder), "--backend", "cpu") == 0
    [entry] = _locked(folder)
    assert (entry.repo_id, entry.repo_type, entry.revision, entry.commit, entry.variant) == (REPO, "kernel", "v1", commit, ARCH)
    published = hub.repos[("kernel", REPO)].commits[commit]
    expected = {path.split("/", 2)[2]: hashlib.sha256(data).hexdigest() for path, data in published.items() if path.startswith(f"build/{ARCH}/")}
    assert entry.files == expected and set(expected) == {"__init__.py", "layers.py", "_tag.py", "metadata.json"}
    assert "wrote" in capsys.readouterr().out


def test_lock_named_variants_from_arguments(project, tmp_path):
    folder, commit = project
    out = tmp_path / "other.lock"
    assert cli("lock", f"{REPO}@v1", "--variant", "torch-cuda", "--variant", "torch-cpu", "-o", str(out)) == 0
    assert sorted(e.variant for e in read_lockfile(out)) == ["torch-cpu", "torch-cuda"]
    assert cli("lock", f"{REPO}@v1", "--variant", "torch-rocm", "-o", str(out)) == 1  # not in the repo


def test_load_kernel_from_the_lock_makes_no_request_and_needs_no_trust(project, hub):
    folder, commit = project
    cli("lock", "--project", str(folder), "--backend", "cpu")
    before = len(hub.requests)
    kernel = load_kernel(REPO, lockfile=folder / "kernel-fx.lock", backend="cpu")
    assert kernel.TAG == "v1-arch" and source_of(kernel).commit == commit
    assert len(hub.requests) == before


def test_locked_layer_repository_through_kernelize_finds_the_lock_upwards(project, monkeypatch):
    folder, _ = project
    cli("lock", "--project", str(folder), "--backend", "cpu")
    (folder / "src" / "pkg").mkdir(parents=True)
    monkeypatch.chdir(folder / "src" / "pkg")
    assert find_lockfile() == folder / "kernel-fx.lock"

    @kernel_fx.use_kernel_forward_from_hub("Scale")
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight, self.factor = nn.Parameter(torch.ones(2)), 2.0

        def forward(self, x):
            return x * self.weight * self.factor

    model = nn.Sequential(Scale())
    with kernel_fx.use_kernel_mapping({"Scale": {"cpu": LockedLayerRepository(REPO, layer_name="Scale")}}):
        kernelize(model, device="cpu")
    decision = kernel_fx.report(model).decisions[0]
    assert decision.uses_kernel and decision.variant == ARCH


@pytest.mark.parametrize("damage", ["tampered", "truncated", "extra", "missing"])
def test_damaged_cache_is_refused_before_import(project, damage):
    folder, _ = project
    cli("lock", "--project", str(folder), "--backend", "cpu")
    [entry] = _locked(folder)
    variant_dir = entry.cached_dir()
    target = variant_dir / "_tag.py"
    if damage == "tampered":
        target.write_text("import os; TAG = 'evil'\n")
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:5])
    elif damage == "extra":
        (variant_dir / "sitecustomize.py").write_text("print('hi')\n")
    else:
        target.unlink()
    with pytest.raises(KernelIntegrityError) as info:
        load_kernel(REPO, lockfile=folder / "kernel-fx.lock", backend="cpu")
    word = {"tampered": "modified _tag.py", "truncated": "modified _tag.py", "extra": "unexpected sitecustomize.py",
            "missing": "missing _tag.py"}[damage]
    assert word in str(info.value) and "Refusing to import" in str(info.value)
    kernel_id = json.loads((variant_dir / "metadata.json").read_text())["id"]
    assert not [name for name in sys.modules if name.startswith(kernel_id)]  # nothing was executed


def test_not_cached_then_kernel_fx_download_then_offline_load(project, hub_env, tmp_path, monkeypatch, offline):
    folder, _ = project
    lockfile = folder / "kernel-fx.lock"
    cli("lock", "--project", str(folder), "--backend", "cpu")
    fresh = tmp_path / "air-gapped-cache"
    monkeypatch.setenv("KERNEL_FX_CACHE", str(fresh))
    with pytest.raises(NotCachedError, match=rf"is not in the cache .*fetch it with `kernel-fx download {lockfile}`"):
        load_kernel(REPO, lockfile=lockfile, backend="cpu")
    assert cli("download", str(lockfile)) == 0
    offline()
    assert load_kernel(REPO, lockfile=lockfile, backend="cpu").TAG == "v1-arch"


def test_download_refuses_a_damaged_cache(project, capsys):
    folder, _ = project
    cli("lock", "--project", str(folder), "--backend", "cpu")
    [entry] = _locked(folder)
    (entry.cached_dir() / "_tag.py").write_text("TAG = 'evil'\n")
    assert cli("download", str(folder / "kernel-fx.lock")) == 1
    assert "modified _tag.py" in capsys.readouterr().err


def test_lock_errors_name_the_problem(project, tmp_path):
    folder, _ = project
    cli("lock", "--project", str(folder), "--backend", "cpu")
    with pytest.raises(LockfileError, match=r"has no entry for 'org/other' \(it locks: stranger/scale\); add it with `kernel-fx lock org/other`"):
        load_kernel("org/other", lockfile=folder / "kernel-fx.lock")
    bad = tmp_path / "bad.lock"
    data = json.loads((folder / "kernel-fx.lock").read_text())
    data["kernels"][0]["commit"] = "main"
    bad.write_text(json.dumps(data))
    with pytest.raises(LockfileError, match=r"kernels\[0\] commit 'main' must be a 40-hex commit sha"):
        load_kernel(REPO, lockfile=bad)
    bad.write_text("{}")
    with pytest.raises(LockfileError, match=r"is neither a kernel_fx lock file .* nor a kernels.lock"):
        load_kernel(REPO, lockfile=bad)


def test_project_without_declarations(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    with pytest.raises(LockfileError, match=r"declares no kernels; add a \[tool.kernel_fx.kernels\] table"):
        kernel_fx.hub.specs.project_specs(tmp_path)


def test_lock_file_is_stable(project):
    folder, _ = project
    cli("lock", "--project", str(folder), "--backend", "cpu")
    first = (folder / "kernel-fx.lock").read_text()
    cli("lock", "--project", str(folder), "--backend", "cpu")
    assert (folder / "kernel-fx.lock").read_text() == first
    assert os.path.getsize(folder / "kernel-fx.lock") > 0
