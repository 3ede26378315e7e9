"""The cache: HF_HUB_OFFLINE=1, pinned commits without requests, and what a cold cache says."""

from __future__ import annotations

import pytest
from hub_helpers import run_python

from kernel_fx import get_kernel, get_kernel_variants, has_kernel
from kernel_fx.hub.errors import NotCachedError, NoVariantError
from kernel_fx.hub.importer import source_of

REPO = "kernels-community/scale"


@pytest.fixture
def warm(publish, hub):
    """Publish v1 (also `main`, tag `t1`) and v2 and load each once online; return the commits."""
    v1 = publish(REPO, {"torch-cpu": "v1", "torch-cuda": "cuda-v1"}, branch="v1", tags=("t1",))
    hub.repos[("kernel", REPO)].branches["main"] = v1
    v2 = publish(REPO, {"torch-cpu": "v2"}, branch="v2")
    for kwargs in ({}, {"version": 1}, {"version": 2}, {"revision": "t1"}):
        get_kernel(REPO, backend="cpu", **kwargs)
    return {"v1": v1, "v2": v2}


@pytest.mark.parametrize("kwargs, tag", [({}, "v1"), ({"version": 1}, "v1"), ({"version": 2}, "v2"),
                                         ({"revision": "t1"}, "v1"), ({"revision": "commit-v2"}, "v2")],
                         ids=["main", "version1", "version2", "tag", "commit"])
def test_offline_resolves_everything_from_the_cache(warm, hub, offline, kwargs, tag):
    hub.stop()  # offline must not even try
    offline()
    if kwargs.get("revision") == "commit-v2":
        kwargs = {"revision": warm["v2"]}
    kernel = get_kernel(REPO, backend="cpu", **kwargs)
    assert kernel.TAG == tag
    assert source_of(kernel).commit == warm[tag]


def test_offline_variants_are_the_cached_ones(warm, offline):
    offline()
    found = get_kernel_variants(REPO, version=1, backend="cpu")
    assert found.from_cache and [c.name for c in found.checks] == ["torch-cpu"]  # torch-cuda was never downloaded
    with pytest.raises(NoVariantError, match=r"only the variants in the local cache were considered.*torch-cpu: noarch build for backend cpu"):
        get_kernel(REPO, version=1, backend="cuda")


def test_offline_unknown_version_lists_the_cached_ones(warm, offline, hub_env):
    offline()
    with pytest.raises(NotCachedError) as info:
        get_kernel(REPO, version=3, backend="cpu")
    message = str(info.value)
    assert f"kernel {REPO}@v3 is not in the cache {hub_env}" in message
    assert "cached versions: 1, 2; cached branches and tags: main, t1, v1, v2" in message
    assert "kernel-fx download" in message and "unset HF_HUB_OFFLINE" in message


def test_offline_and_never_cached(offline, hub_env):
    offline()
    message = r"HF_HUB_OFFLINE is set and kernel kernels-community/none@main is not in the cache .*nothing is cached for this repo"
    with pytest.raises(NotCachedError, match=message):
        get_kernel("kernels-community/none", backend="cpu")
    with pytest.raises(NotCachedError):
        has_kernel("kernels-community/none", backend="cpu")  # unknown, not "no"


def test_pinned_commit_with_warm_cache_makes_no_request(publish, hub):
    commit = publish(REPO, {"torch-cpu": "pinned"})
    get_kernel(REPO, revision=commit, backend="cpu")
    before = len(hub.requests)
    kernel = get_kernel(REPO, revision=commit, backend="cpu")
    assert kernel.TAG == "pinned"
    assert len(hub.requests) == before
    assert has_kernel(REPO, revision=commit, backend="cpu") and len(hub.requests) == before


def test_pinned_commit_in_a_fresh_process_makes_no_request(publish, hub, hub_env):
    commit = publish(REPO, {"torch-cpu": "pinned"})
    get_kernel(REPO, revision=commit, backend="cpu")
    before = len(hub.requests)
    out = run_python(f"""
        import sys, kernel_fx
        k = kernel_fx.get_kernel({REPO!r}, revision={commit!r}, backend="cpu")
        print(k.TAG, "huggingface_hub.file_download" in sys.modules)
    """, HF_ENDPOINT=hub.url, KERNEL_FX_CACHE=str(hub_env))
    assert out.stdout.split() == ["pinned", "False"]  # not even the download machinery was imported
    assert len(hub.requests) == before


def test_pinned_commit_not_cached_for_this_backend_asks_the_hub(publish, hub):
    commit = publish(REPO, {"torch-cpu": "cpu", "torch-universal": "universal"})
    get_kernel(REPO, revision=commit, backend="cpu")
    before = len(hub.requests)
    assert get_kernel(REPO, revision=commit, backend="xpu").TAG == "universal"  # torch-cpu does not fit xpu
    assert len(hub.requests) > before


def test_hub_down_falls_back_to_the_cache_with_a_warning(warm, hub, caplog):
    hub.fail("/api/", 503)
    kernel = get_kernel(REPO, version=2, backend="cpu")
    assert kernel.TAG == "v2"
    assert any("answered HTTP 503" in r.getMessage() and "Using the cached" in r.getMessage() for r in caplog.records)


def test_kernel_fx_cache_is_the_cache_dir(publish, hub_env):
    publish(REPO, {"torch-cpu": "x"})
    kernel = get_kernel(REPO, backend="cpu")
    assert kernel.__file__.startswith(str(hub_env))
