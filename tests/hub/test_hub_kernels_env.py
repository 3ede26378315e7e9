"""The `kernels` package's environment variables that concern loading: LOCAL_KERNELS and KERNELS_CACHE."""

from __future__ import annotations

import pytest
from hub_helpers import kernel_files
from kernel_repos import make_kernel_repo

from kernel_fx import get_kernel, get_kernel_variants, has_kernel, load_kernel
from kernel_fx.hub.errors import EnvironmentVariableError, NotCachedError
from kernel_fx.hub.importer import source_of


def test_local_kernels_replaces_hub_repos(tmp_path, monkeypatch):
    one = make_kernel_repo(tmp_path / "one", {"torch-cpu": kernel_files("one")})
    two = make_kernel_repo(tmp_path / "two", {"torch-cpu": kernel_files("two")})
    monkeypatch.setenv("LOCAL_KERNELS", f"stranger/one={one}:stranger/two={two}")
    kernel = get_kernel("stranger/two", version=1, backend="cpu")  # no Hub, no trust: the user's own path
    assert kernel.TAG == "two" and source_of(kernel).repo == f"stranger/two (local {two})"
    assert has_kernel("stranger/one", backend="cpu")
    assert [c.name for c in get_kernel_variants("stranger/one", backend="cpu").checks] == ["torch-cpu"]


def test_kernel_fx_local_kernels_wins_for_a_repo_in_both(tmp_path, monkeypatch):
    theirs = make_kernel_repo(tmp_path / "theirs", {"torch-cpu": kernel_files("theirs")})
    ours = make_kernel_repo(tmp_path / "ours", {"torch-cpu": kernel_files("ours")})
    monkeypatch.setenv("LOCAL_KERNELS", f"stranger/x={theirs}")
    monkeypatch.setenv("KERNEL_FX_LOCAL_KERNELS", f"stranger/x={ours}")
    assert get_kernel("stranger/x", backend="cpu").TAG == "ours"


def test_local_kernels_does_not_replace_a_locked_kernel(tmp_path, monkeypatch):
    """As in `kernels`: a lock pins the kernel, LOCAL_KERNELS does not apply to it."""
    local = make_kernel_repo(tmp_path / "local", {"torch-cpu": kernel_files("local")})
    monkeypatch.setenv("LOCAL_KERNELS", f"stranger/x={local}")
    lockfile = tmp_path / "kernels.lock"
    lockfile.write_text('[{"dependency": {"repo-id": "stranger/x", "version": 1}, "lock": {"commit": "%s"}}]' % ("ab" * 20))
    with pytest.raises(NotCachedError):
        load_kernel("stranger/x", lockfile=lockfile, backend="cpu")


def test_local_kernels_may_point_at_a_folder_of_variants(tmp_path, monkeypatch):
    """`kernels` also looks for variants right under the path (a build output), not only under build/."""
    repo = make_kernel_repo(tmp_path / "repo", {"torch-cpu": kernel_files("flat")})
    monkeypatch.setenv("LOCAL_KERNELS", f"stranger/flat={repo / 'build'}")
    assert get_kernel("stranger/flat", backend="cpu").TAG == "flat"


@pytest.mark.parametrize("value", ["just-a-path", "stranger/x=", "=/opt/x"])
def test_malformed_local_kernels_is_a_value_error(monkeypatch, value):
    monkeypatch.setenv("LOCAL_KERNELS", value)
    with pytest.raises(EnvironmentVariableError, match="LOCAL_KERNELS entry .* must be 'org/name=/path/to/repo'") as info:
        get_kernel("org/x")
    assert isinstance(info.value, ValueError)


def test_kernels_cache_is_the_cache_when_kernel_fx_cache_is_unset(publish, monkeypatch, tmp_path):
    publish("kernels-community/cached", {"torch-cpu": "x"})
    monkeypatch.delenv("KERNEL_FX_CACHE")
    monkeypatch.setenv("KERNELS_CACHE", str(tmp_path / "kernels-cache"))
    assert get_kernel("kernels-community/cached", backend="cpu").__file__.startswith(str(tmp_path / "kernels-cache"))


def test_kernel_fx_cache_wins_over_kernels_cache(publish, monkeypatch, tmp_path, hub_env):
    publish("kernels-community/cached2", {"torch-cpu": "x"})
    monkeypatch.setenv("KERNELS_CACHE", str(tmp_path / "kernels-cache"))
    assert get_kernel("kernels-community/cached2", backend="cpu").__file__.startswith(str(hub_env))
