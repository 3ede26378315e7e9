"""`LockedLayerRepository` and `get_locked_kernel` with a `kernels.lock` in the `kernels` 0.19 format:
the lock is read when the repository is made, the locked build is downloaded when missing (as
`kernels` does), and a lock that cannot be honoured is an error or a reported, warned fallback."""

from __future__ import annotations

import pytest
import torch
from hub_helpers import kernel_files, kernels_variant, write_repo
from models import Scale
from test_hub_kernels_lock import kernels_lock
from torch import nn

import kernel_fx
from kernel_fx import KernelizeError, LockedLayerRepository, Mode, Reason, get_locked_kernel, use_kernel_mapping
from kernel_fx.hub.errors import LockfileError, NotCachedError
from kernel_fx.hub.importer import source_of

REPO = "stranger/scale"


@pytest.fixture
def lockfile(tmp_path, hub):
    """REPO v1 and v2 on the loopback Hub (kernels-style builds with a digest); a kernels.lock pinning v1."""
    commits = {}
    for tag in ("v1", "v2"):
        root = write_repo(tmp_path / f"src-{tag}", {"torch-cpu": kernels_variant(f"locked_scale_{tag}", kernel_files(tag))})
        commits[tag] = hub.publish(REPO, root, branch=tag)
    path = tmp_path / "project" / "kernels.lock"
    path.parent.mkdir()
    path.write_text(kernels_lock((REPO, {"version": 1}, commits["v1"])))
    return path


def test_kernelize_through_a_kernels_lock_downloads_the_locked_commit(lockfile):
    repo = LockedLayerRepository(REPO, layer_name="Scale", lockfile=lockfile)
    model = nn.Sequential(Scale(8)).eval()
    x = torch.randn(2, 8)
    expected = model(x)
    with use_kernel_mapping({"Scale": {"cpu": repo}}):
        kernelize_strict(model)
    (decision,) = kernel_fx.report(model).decisions
    assert decision.uses_kernel and "stranger/scale" in decision.repository
    layer = kernel_fx.get_kernelized_layers(model).layers["0"]
    assert layer.repo == repo
    torch.testing.assert_close(model(x), expected)


def kernelize_strict(model):
    kernel_fx.kernelize(model, mode=Mode.INFERENCE, device="cpu", use_fallback=False)


def test_get_locked_kernel_downloads_and_load_kernel_does_not(lockfile, hub_env):
    with pytest.raises(NotCachedError):
        kernel_fx.load_kernel(REPO, lockfile=lockfile, backend="cpu")
    kernel = get_locked_kernel(REPO, lockfile=lockfile, backend="cpu", user_agent={"app": "test"})
    assert kernel.TAG == "v1" and source_of(kernel).revision == "v1"
    assert kernel_fx.load_kernel(REPO, lockfile=lockfile, backend="cpu") is kernel  # now cached


def test_offline_and_not_cached_is_a_reported_fallback_or_an_error(lockfile, offline, caplog):
    offline()
    repo = LockedLayerRepository(REPO, layer_name="Scale", lockfile=lockfile)
    model = nn.Sequential(Scale(8))
    with use_kernel_mapping({"Scale": {"cpu": repo}}):
        with pytest.raises(KernelizeError, match="could not load: NotCachedError"):
            kernelize_strict(model)
        kernel_fx.kernelize(model, mode=Mode.INFERENCE, device="cpu")
    (decision,) = kernel_fx.report(model).decisions
    assert decision.rejected.reason is Reason.LOAD_FAILED and "is not in the cache" in decision.rejected.detail
    assert any("could not load" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)  # never only a debug log


def test_a_lock_without_the_kernel_fails_when_the_repository_is_made(lockfile):
    with pytest.raises(LockfileError, match=r"has no entry for 'org/other' \(it locks: stranger/scale\)"):
        LockedLayerRepository("org/other", layer_name="Scale", lockfile=lockfile)


def test_a_locked_repository_pickles_with_its_lock(lockfile):
    import pickle

    repo = LockedLayerRepository(REPO, layer_name="Scale", lockfile=lockfile)
    lockfile.unlink()  # read at construction: the copy does not need the file again
    copy = pickle.loads(pickle.dumps(repo))
    assert copy == repo and copy.locked == repo.locked
