"""get_kernel & co. against the loopback Hub, through the real huggingface_hub client."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from hub_helpers import kernel_files

from kernel_fx import get_kernel, get_kernel_variants, has_kernel
from kernel_fx.errors import KernelLoadError
from kernel_fx.hub.errors import (
    KernelIntegrityError,
    KernelRepoNotFoundError,
    KernelRevisionNotFoundError,
    NoVariantError,
)
from kernel_fx.hub.importer import source_of
from kernel_fx.hub.integrity import sha256_file
from kernel_fx.hub.variants import system_info

REPO = "kernels-community/scale"  # trusted by default
ARCH = "torch{}{}-cxx11-cpu-x86_64-linux".format(*system_info("cpu").torch)


def test_default_revision_is_main_and_loads_relative_imports(publish):
    commit = publish(REPO, {"torch-cpu": "cpu-main"})
    kernel = get_kernel(REPO, backend="cpu")
    assert kernel.TAG == "cpu-main"
    assert hasattr(kernel.layers, "Scale")
    source = source_of(kernel)
    assert (source.repo, source.revision, source.commit, source.variant, source.unpinned) == (REPO, "main", commit, "torch-cpu", True)
    assert kernel.__name__ in sys.modules


def test_only_the_chosen_variant_is_downloaded(publish, hub, hub_env):
    publish(REPO, {ARCH: "arch", "torch-cpu": "noarch", "torch-cuda": "cuda", "torch-universal": "universal"})
    kernel = get_kernel(REPO, backend="cpu")
    assert kernel.TAG == "arch"  # arch builds are preferred
    resolved = [path for method, path in hub.requests if "/resolve/" in path]
    assert resolved and all(f"/build/{ARCH}/" in path for path in resolved)
    snapshots = list((hub_env / "kernels--kernels-community--scale" / "snapshots").iterdir())
    assert [p.name for p in (snapshots[0] / "build").iterdir()] == [ARCH]


def test_version_resolves_branch_v_n(publish):
    publish(REPO, {"torch-cpu": "v1"}, branch="v1")
    publish(REPO, {"torch-cpu": "v2"}, branch="v2")
    assert get_kernel(REPO, version=1, backend="cpu").TAG == "v1"
    assert get_kernel(REPO, version=2, backend="cpu").TAG == "v2"


def test_two_versions_of_one_kernel_coexist(publish):
    publish(REPO, {"torch-cpu": "v1"}, branch="v1", kernel_id="same_kernel_id")
    publish(REPO, {"torch-cpu": "v2"}, branch="v2", kernel_id="same_kernel_id")
    one, two = get_kernel(REPO, version=1, backend="cpu"), get_kernel(REPO, version=2, backend="cpu")
    assert (one.TAG, two.TAG) == ("v1", "v2")
    assert one.__name__ != two.__name__ and sys.modules[one.__name__] is one and sys.modules[two.__name__] is two
    assert one.layers.Scale is not two.layers.Scale


def test_unknown_version_says_which_exist(publish):
    publish(REPO, {"torch-cpu": "v1"}, branch="v1")
    publish(REPO, {"torch-cpu": "v3"}, branch="v3")
    with pytest.raises(KernelRevisionNotFoundError, match=r"has no version 2 \(branch v2\); its versions are: 1, 3\."):
        get_kernel(REPO, version=2, backend="cpu")


def test_repo_without_versions_says_so(publish):
    publish(REPO, {"torch-cpu": "main"})
    with pytest.raises(KernelRevisionNotFoundError, match="it has no v<N> branches; pass revision= instead"):
        get_kernel(REPO, version=1, backend="cpu")


def test_newer_version_is_logged_once(publish, caplog):
    repo = "kernels-community/logged-once"  # "once" is per process: a repo no other test asks for
    publish(repo, {"torch-cpu": "v1"}, branch="v1")
    publish(repo, {"torch-cpu": "v2"}, branch="v2")
    with caplog.at_level(logging.WARNING, logger="kernel_fx.hub.revisions"):
        get_kernel(repo, version=1, backend="cpu")
        get_kernel(repo, version=1, backend="cpu")
    newer = [r.getMessage() for r in caplog.records if "newer version" in r.getMessage()]
    assert newer == [f"kernel_fx: {repo} has a newer version (v2) than the requested v1; pass version=2 to use it."]


@pytest.mark.parametrize("kind", ["branch", "tag", "commit"])
def test_revision_may_be_a_branch_a_tag_or_a_commit(publish, kind):
    commit = publish(REPO, {"torch-cpu": "pinned"}, branch="dev", tags=("release-1",))
    publish(REPO, {"torch-cpu": "main"})
    revision = {"branch": "dev", "tag": "release-1", "commit": commit}[kind]
    kernel = get_kernel(REPO, revision=revision, backend="cpu")
    assert kernel.TAG == "pinned"
    assert source_of(kernel).commit == commit


def test_unknown_revision(publish):
    publish(REPO, {"torch-cpu": "main"})
    with pytest.raises(KernelRevisionNotFoundError, match=r"'kernels-community/scale' has no revision 'nope' \(no branch, tag or commit"):
        get_kernel(REPO, revision="nope", backend="cpu")
    with pytest.raises(KernelRevisionNotFoundError, match="has no revision '0{40}'"):
        get_kernel(REPO, revision="0" * 40, backend="cpu")


@pytest.mark.parametrize("repo_type", ["kernel", "model"])
def test_repo_types_kernel_and_model(publish, hub_env, repo_type):
    publish(REPO, {"torch-cpu": repo_type}, repo_type=repo_type)
    assert get_kernel(REPO, backend="cpu").TAG == repo_type
    assert (hub_env / f"{repo_type}s--kernels-community--scale").is_dir()


def test_repo_not_found_names_the_types_tried(hub):
    with pytest.raises(KernelRepoNotFoundError, match=r"'kernels-community/none' was not found on http://127.0.0.1:\d+ \(tried repo types: kernel, model\)"):
        get_kernel("kernels-community/none", backend="cpu")


def test_no_variant_lists_every_variant_and_the_system(publish):
    publish(REPO, {"torch-cuda": "cuda", "torch-stable-abi999-cu130-x86_64-linux": "future"})
    with pytest.raises(NoVariantError) as info:
        get_kernel(REPO, backend="cpu")
    message = str(info.value)
    system = system_info("cpu")
    assert f"torch {system.torch[0]}.{system.torch[1]}" in message and "backend cpu" in message
    assert f"{system.cpu}-{system.os}" in message
    assert "torch-cuda: noarch build for backend cuda, this system uses cpu" in message
    assert "torch-stable-abi999-cu130-x86_64-linux: stable-ABI build needs torch >= 9.99" in message


def test_repo_without_build_dir(publish):
    publish(REPO, {})
    with pytest.raises(NoVariantError, match="the repo has no build/ variants"):
        get_kernel(REPO, backend="cpu")


def test_failing_import_leaves_nothing_and_names_everything(publish):
    broken = dict(kernel_files("x"), **{"layers.py": "raise RuntimeError('boom in layers')\n"})
    commit = publish(REPO, {"torch-cpu": broken}, kernel_id="broken_kernel")
    with pytest.raises(KernelLoadError) as info:
        get_kernel(REPO, backend="cpu")
    message = str(info.value)
    assert REPO in message and commit in message and "'torch-cpu'" in message and "RuntimeError: boom in layers" in message
    assert not [name for name in sys.modules if name.startswith("broken_kernel")]


def test_get_kernel_variants_and_has_kernel(publish):
    commit = publish(REPO, {"torch-cpu": "cpu", "torch-cuda": "cuda"}, branch="v1")
    found = get_kernel_variants(REPO, version=1, backend="cpu")
    assert (found.revision, found.commit, found.from_cache) == ("v1", commit, False)
    assert [(c.name, c.reason) for c in found.checks] == [
        ("torch-cpu", None), ("torch-cuda", "noarch build for backend cuda, this system uses cpu")]
    assert found.chosen.name == "torch-cpu"
    assert has_kernel(REPO, version=1, backend="cpu")
    assert not has_kernel(REPO, version=1, backend="xpu")
    assert not has_kernel(REPO, version=7, backend="cpu")
    assert not has_kernel("kernels-community/none", backend="cpu")


def _with_digest(files: dict[str, str], **overrides: str) -> dict[str, str]:
    import hashlib

    digest = {name: hashlib.sha256(overrides.get(name, src).encode()).hexdigest() for name, src in files.items()}
    meta = {"id": "digest_kernel", "name": "digest", "version": 1, "backend": {"type": "cpu"}, "digest": {"sha256": digest}}
    return {**files, "metadata.json": json.dumps(meta)}


def test_metadata_digest_is_checked(publish):
    files = {"__init__.py": "from . import layers\nfrom ._tag import TAG\n", "layers.py": "", "_tag.py": "TAG = 'ok'\n"}
    publish(REPO, {"torch-cpu": _with_digest(files)}, branch="good")
    publish(REPO, {"torch-cpu": _with_digest(files, **{"_tag.py": "TAG = 'other'\n"})}, branch="bad")
    assert get_kernel(REPO, revision="good", backend="cpu").TAG == "ok"
    with pytest.raises(KernelIntegrityError, match=r"differ from the digest in its metadata.json .*modified _tag.py"):
        get_kernel(REPO, revision="bad", backend="cpu")


def test_cached_files_match_the_published_ones(publish, hub, hub_env):
    commit = publish(REPO, {"torch-cpu": "cpu"})
    kernel = get_kernel(REPO, backend="cpu")
    published = hub.repos[("kernel", REPO)].commits[commit]
    variant_dir = hub_env / "kernels--kernels-community--scale" / "snapshots" / commit / "build" / "torch-cpu"
    import hashlib

    assert kernel.__file__.startswith(str(variant_dir))
    for name in ("__init__.py", "layers.py", "_tag.py", "metadata.json"):
        assert sha256_file(variant_dir / name) == hashlib.sha256(published[f"build/torch-cpu/{name}"]).hexdigest()


@pytest.mark.cuda
def test_cuda_torch_picks_the_cuda_arch_build_and_it_runs(publish):
    import torch

    system = system_info()
    assert system.backend == "cuda"
    assert system.backend_version == tuple(int(p) for p in torch.version.cuda.split(".")[:2])
    major, minor = system.backend_version
    prefix = "torch{}{}-{}".format(*system.torch, "cxx11" if system.cxx11_abi else "cxx98")
    fits, too_new = (f"{prefix}-cu{major}{m}-{system.cpu}-{system.os}" for m in (minor, minor + 1))
    publish(REPO, {fits: "cuda-arch", too_new: "too-new", "torch-cuda": "noarch", "torch-cpu": "cpu"})
    found = get_kernel_variants(REPO)
    assert found.chosen.name == fits
    assert dict((c.name, c.reason) for c in found.checks)[too_new] == (
        f"built for cuda {major}.{minor + 1}, newer than torch's cuda {major}.{minor}")
    kernel = get_kernel(REPO)
    assert kernel.TAG == "cuda-arch"
    layer = torch.nn.Module()
    layer.weight, layer.factor = torch.full((4,), 2.0, device="cuda"), 3.0
    out = kernel.layers.Scale.forward(layer, torch.ones(4, device="cuda"))
    torch.testing.assert_close(out, torch.full((4,), 6.0, device="cuda"))
