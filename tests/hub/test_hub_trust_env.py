"""The trust gate and the environment variables read at call time."""

from __future__ import annotations

import pytest
from hub_helpers import kernel_files
from kernel_repos import make_kernel_repo

import kernel_fx
from kernel_fx import LayerRepository, MappingError, get_kernel, get_local_kernel, has_kernel
from kernel_fx.errors import KernelLoadError
from kernel_fx.hub.errors import UntrustedKernelError
from kernel_fx.hub.importer import source_of


@pytest.fixture
def stranger(publish):
    publish("stranger/scale", {"torch-cpu": "stranger"})
    return "stranger/scale"


def test_untrusted_repo_is_refused_before_download_with_every_way_out(stranger, hub, hub_env):
    with pytest.raises(UntrustedKernelError) as info:
        get_kernel(stranger, backend="cpu")
    message = str(info.value)
    for way in ("trust_remote_code=True", "trust_remote_code=['stranger/scale']", "KERNEL_FX_TRUSTED",
                "'stranger'", "`kernel-fx lock stranger/scale`", "LockedLayerRepository", "kernels-community"):
        assert way in message
    assert not [p for _, p in hub.requests if "/resolve/" in p]  # no file of it was fetched
    assert has_kernel(stranger, backend="cpu")  # existence is not a trust question


@pytest.mark.parametrize(
    "trust, env",
    [(True, None), (["stranger/scale"], None), (("stranger",), None), (False, "stranger"),
     (False, "other/x, stranger/scale")],
    ids=["true", "repo-list", "owner-list", "env-owner", "env-repo"],
)
def test_ways_to_trust(stranger, monkeypatch, trust, env):
    if env is not None:
        monkeypatch.setenv("KERNEL_FX_TRUSTED", env)
    assert get_kernel(stranger, backend="cpu", trust_remote_code=trust).TAG == "stranger"


def test_trust_list_for_another_repo_does_not_count(stranger):
    with pytest.raises(UntrustedKernelError):
        get_kernel(stranger, backend="cpu", trust_remote_code=["stranger/other"])


@pytest.mark.parametrize("bad", ["stranger/scale", 1, [1]])
def test_trust_setting_must_be_bool_or_list(bad):
    with pytest.raises(MappingError, match="must be True, False, or a list of repo ids or owners"):
        get_kernel("stranger/scale", trust_remote_code=bad)
    with pytest.raises(MappingError):
        LayerRepository("stranger/scale", layer_name="Scale", trust_remote_code=bad)


def test_layer_repository_trust_list_is_hashable_and_used(stranger):
    repo = LayerRepository(stranger, layer_name="Scale", trust_remote_code=["stranger/scale"])
    assert repo.trust_remote_code == ("stranger/scale",) and hash(repo)
    assert repo.load(backend="cpu").__name__ == "Scale"


def test_local_paths_load_freely(tmp_path):
    root = make_kernel_repo(tmp_path / "local", {"torch-cpu": kernel_files("local")})
    assert get_local_kernel(root, backend="cpu").TAG == "local"


# -- KERNEL_FX_LOCAL_KERNELS --------------------------------------------------------------------


@pytest.mark.parametrize("sep", [":", ","])
def test_local_override_replaces_the_hub_repo(tmp_path, monkeypatch, sep):
    one = make_kernel_repo(tmp_path / "one", {"torch-cpu": kernel_files("one")})
    two = make_kernel_repo(tmp_path / "two", {"torch-cpu": kernel_files("two")})
    monkeypatch.setenv("KERNEL_FX_LOCAL_KERNELS", f"stranger/one={one}{sep}stranger/two={two}")
    kernel = get_kernel("stranger/two", version=3, backend="cpu")  # no Hub, no trust needed: the user's own path
    assert kernel.TAG == "two"
    assert source_of(kernel).repo == f"stranger/two (local {two})"
    assert kernel_fx.load_kernel("stranger/one", lockfile=tmp_path / "no.lock", backend="cpu").TAG == "one"


def test_local_override_is_read_at_call_time(tmp_path, monkeypatch, publish):
    publish("kernels-community/x", {"torch-cpu": "hub"})
    assert get_kernel("kernels-community/x", backend="cpu").TAG == "hub"
    local = make_kernel_repo(tmp_path / "local", {"torch-cpu": kernel_files("local")})
    monkeypatch.setenv("KERNEL_FX_LOCAL_KERNELS", f"kernels-community/x={local}")
    assert get_kernel("kernels-community/x", backend="cpu").TAG == "local"


def test_malformed_local_override(monkeypatch):
    monkeypatch.setenv("KERNEL_FX_LOCAL_KERNELS", "just-a-path")
    with pytest.raises(KernelLoadError, match=r"KERNEL_FX_LOCAL_KERNELS entry 'just-a-path' must be 'org/name=/path/to/repo'"):
        get_kernel("org/x")


def test_request_validation():
    with pytest.raises(MappingError, match="give one of them"):
        get_kernel("org/x", revision="main", version=1)
    with pytest.raises(MappingError, match=r"repo_id='nope' must be a Hub repo id"):
        get_kernel("nope")
    with pytest.raises(MappingError, match="must be a non-negative int"):
        get_kernel("org/x", version=-1)
