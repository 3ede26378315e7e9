"""A Hub that accepts connections and never answers: bounded by KERNEL_FX_HUB_TIMEOUT, then the cache or a reason."""

from __future__ import annotations

import time

import pytest
import torch
from hub_helpers import run_python
from torch import nn

import kernel_fx
from kernel_fx import LayerRepository, Reason, get_kernel, kernelize, use_kernel_forward_from_hub
from kernel_fx.hub import env
from kernel_fx.hub.errors import EnvironmentVariableError, HubTimeoutError
from kernel_fx.hub.remote import download_variant
from kernel_fx.hub.revisions import Resolved

REPO = "kernels-community/scale"
TIMEOUT = 0.5
SLACK = 2.5  # thread start, the fallback, importing: generous for a loaded CI machine


@use_kernel_forward_from_hub("Scale")
class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.full((4,), 2.0))
        self.factor = 3.0

    def forward(self, x):
        return x * self.weight * self.factor


@pytest.fixture
def timeout(monkeypatch):
    monkeypatch.setenv("KERNEL_FX_HUB_TIMEOUT", str(TIMEOUT))
    return TIMEOUT


def _kernelize_timed(repo: LayerRepository) -> tuple[nn.Module, float]:
    model = nn.Sequential(Scale())
    start = time.monotonic()
    with kernel_fx.use_kernel_mapping({"Scale": {"cpu": repo}}):
        kernelize(model, device="cpu")
    return model, time.monotonic() - start


def test_silent_hub_with_a_warm_cache_uses_the_cache(publish, hub, timeout, caplog):
    publish(REPO, {"torch-cpu": "v1"}, branch="v1")
    get_kernel(REPO, version=1, backend="cpu")  # warms the cache, refs/v1 included
    hub.silence()
    asked = hub.count()
    model, took = _kernelize_timed(LayerRepository(REPO, layer_name="Scale", version=1))
    assert hub.count() > asked  # the Hub was asked, and said nothing
    assert took < timeout + SLACK
    decision = kernel_fx.report(model).decisions[0]
    assert decision.uses_kernel and decision.variant == "torch-cpu" and decision.repository.startswith(REPO)
    torch.testing.assert_close(model(torch.ones(4)), torch.full((4,), 6.0))
    warning = next(r.getMessage() for r in caplog.records if "Using the cached" in r.getMessage())
    assert f"did not answer within {timeout:g} s" in warning and "KERNEL_FX_HUB_TIMEOUT" in warning


def test_silent_hub_with_a_cold_cache_falls_back_with_the_timeout_as_reason(hub, timeout):
    hub.silence()
    model, took = _kernelize_timed(LayerRepository(REPO, layer_name="Scale", version=1))
    assert took < timeout + SLACK
    rejected = kernel_fx.report(model).decisions[0].rejected
    assert rejected is not None and rejected.reason is Reason.LOAD_FAILED
    assert rejected.detail.startswith("HubTimeoutError: ")
    assert f"The Hugging Face Hub at {hub.url} did not answer within {timeout:g} s while resolving {REPO}@v1" in rejected.detail
    assert f"timeout from KERNEL_FX_HUB_TIMEOUT={timeout:g}" in rejected.detail
    assert "set KERNEL_FX_HUB_TIMEOUT to the seconds to wait" in rejected.detail
    assert f"Nothing of {REPO}@v1 is cached" in rejected.detail
    torch.testing.assert_close(model(torch.ones(4)), torch.full((4,), 6.0))  # the original forward


@pytest.mark.parametrize("kwargs", [{}, {"version": 1}, {"revision": "main"}], ids=["main", "version", "branch"])
@pytest.mark.parametrize("seconds", [0.3, 1.2])
def test_the_timeout_is_honoured(hub, monkeypatch, seconds, kwargs):
    monkeypatch.setenv("KERNEL_FX_HUB_TIMEOUT", str(seconds))
    hub.silence()
    start = time.monotonic()
    with pytest.raises(HubTimeoutError, match=rf"did not answer within {seconds:g} s while resolving"):
        get_kernel(REPO, backend="cpu", **kwargs)
    assert seconds <= time.monotonic() - start < seconds + SLACK


@pytest.mark.parametrize("value", ["soon", "0", "-1", "inf", "nan", "10s"])
def test_a_bad_timeout_names_the_value(hub, monkeypatch, value):
    monkeypatch.setenv("KERNEL_FX_HUB_TIMEOUT", value)
    with pytest.raises(EnvironmentVariableError, match=rf"KERNEL_FX_HUB_TIMEOUT={value!r} must be a number of seconds greater than 0"):
        get_kernel(REPO, version=1, backend="cpu")
    assert hub.count() == 0  # reported before anything was asked


def test_a_bad_timeout_is_a_fallback_reason_naming_the_value(hub, monkeypatch):
    monkeypatch.setenv("KERNEL_FX_HUB_TIMEOUT", "soon")
    model, _ = _kernelize_timed(LayerRepository(REPO, layer_name="Scale", version=1))
    rejected = kernel_fx.report(model).decisions[0].rejected
    assert rejected is not None and "KERNEL_FX_HUB_TIMEOUT='soon'" in rejected.detail


def test_the_default_is_ten_seconds_or_huggingface_hub_settings_set_higher(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("KERNEL_FX_HUB_TIMEOUT", raising=False)
    if max(constants.HF_HUB_ETAG_TIMEOUT, constants.HF_HUB_DOWNLOAD_TIMEOUT) <= 10:
        assert env.hub_timeout() == env.HubTimeout(10.0, "the default; KERNEL_FX_HUB_TIMEOUT is unset")
    code = """
        import os
        from kernel_fx.hub import env
        print(env.hub_timeout().origin)
        os.environ["KERNEL_FX_HUB_TIMEOUT"] = "3"
        print(env.hub_timeout().seconds)
    """
    out = run_python(code, HF_HUB_DOWNLOAD_TIMEOUT="42", HF_HUB_ETAG_TIMEOUT="20").stdout.splitlines()
    assert out == ["huggingface_hub's HF_HUB_DOWNLOAD_TIMEOUT=42; KERNEL_FX_HUB_TIMEOUT is unset", "3.0"]


def test_a_download_from_a_silent_hub_stops(publish, hub, timeout):
    # The variant is known (resolved earlier, or pinned by a lock); snapshot_download asks the Hub
    # for the revision again, with no timeout of its own.
    commit = publish(REPO, {"torch-cpu": "v1"})
    resolved = Resolved(REPO, "kernel", "main", commit, ("torch-cpu",))
    hub.silence()
    start = time.monotonic()
    with pytest.raises(HubTimeoutError, match=rf"did not answer within {timeout:g} s while downloading variant torch-cpu"):
        download_variant(resolved, "torch-cpu")
    assert time.monotonic() - start < timeout + SLACK


def test_a_slow_file_body_is_not_cut(publish, hub, timeout):
    publish(REPO, {"torch-cpu": "slow"})
    hub.delay("/_tag.py", 3 * timeout)  # longer than the timeout, within huggingface_hub's read timeout
    assert get_kernel(REPO, backend="cpu").TAG == "slow"
