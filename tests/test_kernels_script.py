"""Code written against the Hugging Face `kernels` package runs on kernel_fx with only the import
changed: one script (tests/scripts/kernels_style.py), run with `kernels` 0.19 and with kernel_fx,
offline, from a local kernel repo, must print the same observations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import kernel_fx
from kernel_fx import LocalLayerRepository, Mode, kernelize, use_kernel_mapping

SCRIPT = Path(__file__).parent / "scripts" / "kernels_style.py"
REPO_ROOT = Path(__file__).resolve().parents[1]

LAYERS = '''
import torch
from torch import nn

CALLS = []


class SiluAndMul(nn.Module):
    can_torch_compile = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CALLS.append("SiluAndMul")
        d = x.shape[-1] // 2
        return nn.functional.silu(x[..., :d]) * x[..., d:]


class RMSNorm(nn.Module):
    can_torch_compile = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        CALLS.append("RMSNorm")
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * hidden_states * torch.rsqrt(variance + self.variance_epsilon)
'''

EXPECTED = [
    "strict: True True",  # use_fallback=False: no mapping for Twice is a ValueError naming it
    "layers: ['act', 'norm']",
    "funcs: []",
    "repo types: ['LayerRepository', 'LocalLayerRepository']",
    "skipped by condition: ['act']",  # RMSNorm's condition=: this model's norm keeps its forward
    "lenient: ['act', 'norm']",  # KernelizeFallback.DEFAULT: Twice falls back, the others get kernels
    "kernel calls per forward: 3",
    "same output: True",
]


@pytest.fixture
def kernel_repo_dir(tmp_path) -> Path:
    """A local kernel repo with the metadata `kernels` 0.19 requires, and a unique module id."""
    variant = tmp_path / "act" / "build" / "torch-cpu"
    variant.mkdir(parents=True)
    (variant / "__init__.py").write_text("from . import layers\n")
    (variant / "layers.py").write_text(LAYERS)
    metadata = {"id": f"_script_kernel_{os.getpid()}", "name": "act", "version": 1, "license": "apache-2.0",
                "python-depends": [], "backend": {"type": "cpu"}}
    (variant / "metadata.json").write_text(json.dumps(metadata))
    return tmp_path / "act"


def run_script(script: Path, repo: Path) -> list[str]:
    env = {**os.environ, "LOCAL_KERNELS": f"org/act={repo}", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))}
    for name in ("KERNEL_FX_DISABLE", "DISABLE_KERNEL_MAPPING", "KERNEL_FX_LOCAL_KERNELS"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, str(script), str(repo)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_the_script_imports_kernels_once():
    text = SCRIPT.read_text()
    assert text.count("from kernels import (") == 1
    assert "import kernel_fx" not in text and "from kernel_fx" not in text


def test_kernels_itself_runs_the_script(kernel_repo_dir):
    """The oracle: the script's expectations are `kernels`' behaviour."""
    pytest.importorskip("kernels")
    assert run_script(SCRIPT, kernel_repo_dir) == EXPECTED


def test_kernel_fx_runs_the_script_with_only_the_import_changed(kernel_repo_dir, tmp_path):
    changed = tmp_path / "kernel_fx_style.py"
    changed.write_text(SCRIPT.read_text().replace("from kernels import (", "from kernel_fx import (", 1))
    assert run_script(changed, kernel_repo_dir) == EXPECTED


# -- behaviours the `kernels` 0.19.1 layer tests rely on (scripts/kernels_tests measures them all) ---

PLUS_ONE = '''
from torch import nn
class PlusOne(nn.Module):
    def forward(self, x):
        return x + 1
'''


@kernel_fx.use_kernel_forward_from_hub("PlusOneFn")
def two_args(x, y):
    return x + y


@kernel_fx.use_kernel_forward_from_hub("PlusOneFn")
def one_arg(x):
    return x


@kernel_fx.use_kernelized_func(two_args)
class TwoArgsHost(nn.Module):
    def forward(self, x):
        return self.two_args(x, x)


@kernel_fx.use_kernelized_func(one_arg)
class OneArgHost(nn.Module):
    def forward(self, x):
        return self.one_arg(x)


def test_a_verdict_for_one_function_is_not_reused_for_another(kernel_repo):
    """Every function module shares one forward; the kernel refused for `two_args` still fits `one_arg`."""
    repo = LocalLayerRepository(kernel_repo({"torch-cpu": {"layers.py": PLUS_ONE}}), layer_name="PlusOne")
    with use_kernel_mapping({"PlusOneFn": {"cpu": repo}}):
        refused = kernelize(TwoArgsHost(), device="cpu", mode=Mode.INFERENCE)
        fits = kernelize(OneArgHost(), device="cpu", mode=Mode.INFERENCE)
    x = torch.zeros(2)
    assert refused(x).tolist() == [0.0, 0.0]  # the original: x + x
    assert fits(x).tolist() == [1.0, 1.0]  # the kernel: x + 1


@kernel_fx.use_kernel_forward_from_hub("Unmapped", condition=lambda module: module.allowed)
class Unmapped(nn.Module):
    def __init__(self, allowed: bool) -> None:
        super().__init__()
        self.allowed = allowed

    def forward(self, x):
        return x


@pytest.mark.parametrize(("mode", "phrase"), [(Mode.FALLBACK, "can only be used to register kernel mappings"),
                                              (Mode.TORCH_COMPILE, "mode must contain")], ids=["fallback", "compile-only"])
def test_an_invalid_mode_is_refused_in_kernels_words(mode, phrase):
    with pytest.raises(ValueError, match=phrase):
        kernelize(nn.Linear(2, 2), mode=mode)


def test_a_layer_whose_condition_holds_but_has_no_mapping_names_it_as_kernels_does():
    with use_kernel_mapping({}, inherit_mapping=False), pytest.raises(ValueError, match="No layer mapping for `Unmapped`"):
        kernelize(Unmapped(True), device="cpu", mode=Mode.INFERENCE, use_fallback=False)


def test_a_condition_that_skips_a_layer_logs_kernels_info_line(caplog):
    with caplog.at_level("INFO", logger="kernel_fx"):
        kernelize(Unmapped(False), device="cpu", mode=Mode.INFERENCE, use_fallback=False)
    assert "Skipping kernelization for `Unmapped` using `Unmapped` due to kernel_condition." in caplog.text


def test_use_kernelized_func_on_an_undecorated_function_says_so_in_kernels_words():
    def plain(x):
        return x

    with pytest.raises(ValueError, match="Function `plain` is not decorated"):
        kernel_fx.use_kernelized_func(plain)


def test_a_repository_is_an_ordinary_object_whose_load_can_be_replaced():
    repo = kernel_fx.LayerRepository("org/none", layer_name="Unmapped", version=1)
    same = kernel_fx.LayerRepository("org/none", layer_name="Unmapped", version=1)
    repo.load = lambda: PlusOneLayer
    assert repo == same and hash(repo) == hash(same)  # still a mapping key
    with use_kernel_mapping({"Unmapped": {"cpu": repo}}, inherit_mapping=False):
        model = kernelize(Unmapped(True), device="cpu", mode=Mode.INFERENCE)
    assert model(torch.zeros(1)).tolist() == [1.0]


class PlusOneLayer(nn.Module):
    def forward(self, x):
        return x + 1


# -- kernels that depend on kernels (`kernel-depends`, `get_kernel_dep`) ------------------------

EINOPS_COMMIT, USER_COMMIT = "e1" * 20, "a2" * 20
USES_EINOPS = "from kernel_fx import get_kernel_dep\n\neinops = get_kernel_dep('org/einops')\n"


def _cache_kernel(cache: Path, repo_id: str, commit: str, init: str, *, depends: list | None = None, ref: str = "v1") -> None:
    """One torch-universal build of `repo_id` at `commit` (branch `ref`) in the huggingface_hub cache layout."""
    folder = cache / f"kernels--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / ref).write_text(commit)
    variant = folder / "snapshots" / commit / "build" / "torch-universal"
    variant.mkdir(parents=True)
    (variant / "__init__.py").write_text(init)
    metadata = {"id": f"_{repo_id.split('/')[1]}_{commit[:8]}_{os.getpid()}", "name": repo_id.split("/")[1], "version": 1,
                "backend": {"type": "universal"}, **({"kernel-depends": depends} if depends else {})}
    (variant / "metadata.json").write_text(json.dumps(metadata))


@pytest.fixture
def dependent_kernels(tmp_path, monkeypatch) -> Path:
    """An offline cache holding org/einops v1 and org/user v1, whose metadata says it needs org/einops v1."""
    cache = tmp_path / "hf-cache"
    _cache_kernel(cache, "org/einops", EINOPS_COMMIT, f"def rearrange(x, pattern):\n    return x\n\nCOMMIT = {EINOPS_COMMIT!r}\n")
    _cache_kernel(cache, "org/user", USER_COMMIT, USES_EINOPS, depends=[{"repo-id": "org/einops", "version": 1}])
    for name in ("KERNEL_FX_LOCAL_KERNELS", "LOCAL_KERNELS", "KERNELS_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KERNEL_FX_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KERNEL_FX_TRUSTED", "org")
    return cache


def test_a_kernel_gets_the_kernels_its_metadata_depends_on(dependent_kernels):
    user = kernel_fx.get_kernel("org/user", version=1)
    assert user.einops is kernel_fx.get_kernel("org/einops", version=1)
    assert user.einops.COMMIT == EINOPS_COMMIT


def test_get_kernel_dep_outside_a_kernel_import_says_where_it_works():
    with pytest.raises(kernel_fx.KernelLoadError, match=r"get_kernel_dep\('org/einops'\) works only while a kernel is being imported"):
        kernel_fx.get_kernel_dep("org/einops")


def test_get_kernel_dep_of_an_undeclared_kernel_names_the_declared_ones(dependent_kernels):
    _cache_kernel(dependent_kernels, "org/sneaky", "b3" * 20, USES_EINOPS.replace("org/einops", "org/other"),
                  depends=[{"repo-id": "org/einops", "version": 1}])
    with pytest.raises(kernel_fx.KernelLoadError, match=r"does not declare org/other .*it declares: org/einops"):
        kernel_fx.get_kernel("org/sneaky", version=1)


def test_a_dependency_cycle_is_refused(dependent_kernels):
    _cache_kernel(dependent_kernels, "org/loop", "c4" * 20, "", depends=[{"repo-id": "org/loop", "version": 1}])
    with pytest.raises(kernel_fx.KernelLoadError, match="cycle: org/loop -> org/loop"):
        kernel_fx.get_kernel("org/loop", version=1)


def _kernels_lock(path: Path, *entries: tuple[str, int, str]) -> Path:
    path.write_text(json.dumps([{"dependency": {"repo-id": r, "version": v}, "lock": {"commit": c}} for r, v, c in entries]))
    return path


def test_a_locked_kernel_gets_its_dependency_at_the_commit_the_same_lock_pins(dependent_kernels, tmp_path):
    lock = _kernels_lock(tmp_path / "kernels.lock", ("org/einops", 1, EINOPS_COMMIT), ("org/user", 1, USER_COMMIT))
    user = kernel_fx.get_locked_kernel("org/user", lockfile=lock)
    assert user.einops.COMMIT == EINOPS_COMMIT


def test_a_lock_without_the_dependency_names_what_is_missing(dependent_kernels, tmp_path):
    lock = _kernels_lock(tmp_path / "kernels.lock", ("org/user", 1, USER_COMMIT))
    with pytest.raises(ValueError, match=r"org/user depends on org/einops \(v1\), but lock file .* does not lock it"):
        kernel_fx.load_kernel("org/user", lockfile=lock)


def test_kernel_fx_lock_locks_the_dependencies_too(dependent_kernels):
    from kernel_fx.hub.locks import lock_kernels
    from kernel_fx.hub.specs import KernelSpec
    from kernel_fx.hub.variants import system_info

    entries = lock_kernels([KernelSpec("org/user", version=1)], system_info())
    assert [(e.repo_id, e.revision, e.commit) for e in entries] == [("org/user", "v1", USER_COMMIT), ("org/einops", "v1", EINOPS_COMMIT)]


# -- decorated functions -------------------------------------------------------------------------


def test_the_deprecated_function_decorator_gives_a_module_whose_class_carries_the_name():
    with pytest.warns(DeprecationWarning):
        @kernel_fx.use_kernel_func_from_hub("identity_func")
        def identity(x):
            return x

    assert isinstance(identity, nn.Module) and type(identity).kernel_layer_name == "identity_func"
    x = torch.ones(2)
    assert identity(x) is x


def test_a_function_marked_for_use_kernelized_func_stays_a_plain_call_of_the_original():
    """Not a module (a difference in the README's table): bare calls always run the original, and
    each host decorated with use_kernelized_func gets its own module."""

    @kernel_fx.use_kernel_forward_from_hub("identity_func")
    def identity(x):
        return x

    assert not isinstance(identity, nn.Module) and identity.kernel_layer_name == "identity_func"


# -- downloads of every variant of a kernels.lock (`download --all-variants`) ---------------------


def test_download_all_variants_checks_every_variant_of_the_locked_commit(dependent_kernels, tmp_path, capsys):
    """Offline, every cached variant of the commit is checked, not only the one that fits this system."""
    from kernel_fx.cli import main

    other = dependent_kernels / "kernels--org--einops" / "snapshots" / EINOPS_COMMIT / "build" / "torch-cuda"
    other.mkdir()
    (other / "__init__.py").write_text("")
    (other / "metadata.json").write_text(json.dumps({"id": "_einops_cuda", "backend": {"type": "cuda"}, "digest": {"sha256": {"__init__.py": "0" * 64}}}))
    lock = _kernels_lock(tmp_path / "kernels.lock", ("org/einops", 1, EINOPS_COMMIT))

    assert main(["download", str(lock)]) == 0  # this system's variant only: torch-universal
    assert main(["download", str(lock), "--all-variants"]) == 1
    assert "torch-cuda" in capsys.readouterr().err


def test_a_kernel_that_imports_get_kernel_dep_from_kernels_loads_too(dependent_kernels):
    """Hub kernels are written against the `kernels` package; its get_kernel_dep sees kernel_fx's loading."""
    pytest.importorskip("kernels._internals.deps")
    _cache_kernel(dependent_kernels, "org/hub-style", "d5" * 20, USES_EINOPS.replace("from kernel_fx", "from kernels"),
                  depends=[{"repo-id": "org/einops", "version": 1}])
    assert kernel_fx.get_kernel("org/hub-style", version=1).einops.COMMIT == EINOPS_COMMIT


def test_a_local_kernel_gets_its_dependencies_as_get_kernel_finds_them(dependent_kernels):
    local = dependent_kernels / "kernels--org--user" / "snapshots" / USER_COMMIT
    assert kernel_fx.get_local_kernel(local).einops.COMMIT == EINOPS_COMMIT
