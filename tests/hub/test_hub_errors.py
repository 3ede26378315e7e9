"""Failures name their real cause, directly and as the fallback reason kernelize records."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kernel_fx
from kernel_fx import LayerRepository, Reason, get_kernel, kernelize, use_kernel_forward_from_hub
from kernel_fx.hub.errors import (
    HubServerError,
    HubUnreachableError,
    KernelRepoNotFoundError,
    KernelRevisionNotFoundError,
    NotCachedError,
    NoVariantError,
    UntrustedKernelError,
)

REPO = "kernels-community/scale"


def test_server_unreachable_is_not_reported_as_a_trust_problem(hub_env):
    # HF_ENDPOINT points at a closed port (the hub_env fixture); the repo is untrusted on purpose.
    with pytest.raises(HubUnreachableError) as info:
        get_kernel("stranger/kernel", backend="cpu")
    message = str(info.value)
    assert "Cannot reach the Hugging Face Hub at http://127.0.0.1:" in message
    assert "ConnectError" in message and "HF_ENDPOINT" in message
    assert "Nothing of stranger/kernel@main is cached" in message
    assert "trust" not in message


def test_http_500_on_the_api(publish, hub):
    publish(REPO, {"torch-cpu": "x"})
    hub.fail("/api/", 500)
    with pytest.raises(HubServerError, match=r"answered HTTP 500 while resolving kernels-community/scale@main"):
        get_kernel(REPO, backend="cpu")


def test_http_500_on_a_file(publish, hub):
    publish(REPO, {"torch-cpu": "x"})
    hub.fail("/resolve/", 500, method="GET")  # a failing HEAD is retried for ~20 s by huggingface_hub
    with pytest.raises(HubServerError, match=r"answered HTTP 500 while downloading variant torch-cpu of kernels-community/scale@main"):
        get_kernel(REPO, backend="cpu")


def test_http_404_on_a_listed_file(publish, hub):
    publish(REPO, {"torch-cpu": "x"})
    hub.fail("/resolve/", 404, method="GET")
    with pytest.raises(kernel_fx.KernelLoadError, match="while downloading variant torch-cpu"):
        get_kernel(REPO, backend="cpu")


def test_connection_dropped_mid_file_is_resumed_and_the_file_is_intact(publish, hub):
    big = "# padding\n" * 20_000 + "TAG = 'big'\n"
    files = {"__init__.py": "from ._tag import TAG\n", "_tag.py": big}
    publish(REPO, {"torch-cpu": files})
    hub.drop("/_tag.py", times=1)
    kernel = get_kernel(REPO, backend="cpu")
    assert kernel.TAG == "big"
    assert open(kernel._tag.__file__).read() == big
    gets = [p for m, p in hub.requests if m == "GET" and p.endswith("/_tag.py")]
    assert len(gets) == 2  # the dropped one, then the resumed one


# -- every cause as kernelize's fallback reason -----------------------------------------------


@use_kernel_forward_from_hub("Scale")
class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.full((4,), 2.0))
        self.factor = 3.0

    def forward(self, x):
        return x * self.weight * self.factor


def _kernelize_reason(repo: LayerRepository) -> kernel_fx.Rejected:
    model = nn.Sequential(Scale())
    with kernel_fx.use_kernel_mapping({"Scale": {"cpu": repo}}):
        kernelize(model, device="cpu")
    rejected = {d.rejected for d in kernel_fx.report(model).decisions if d.rejected is not None}
    assert len(rejected) == 1, rejected
    return rejected.pop()


@pytest.mark.parametrize(
    "case, error, detail",
    [
        ("unreachable", HubUnreachableError, "Cannot reach the Hugging Face Hub"),
        ("repo", KernelRepoNotFoundError, "was not found on http://127.0.0.1"),
        ("revision", KernelRevisionNotFoundError, "has no revision 'nope'"),
        ("version", KernelRevisionNotFoundError, "has no version 9 (branch v9); its versions are: 1"),
        ("variant", NoVariantError, "torch-cuda: noarch build for backend cuda, this system uses cpu"),
        ("offline", NotCachedError, "HF_HUB_OFFLINE is set and kernel kernels-community/scale@v1 is not in the cache"),
        ("server", HubServerError, "answered HTTP 500"),
        ("trust", UntrustedKernelError, "Kernel repo 'stranger/scale' is not trusted"),
    ],
)
def test_kernelize_records_the_cause(publish, hub, monkeypatch, case, error, detail):
    publish(REPO, {"torch-cpu": "v1"}, branch="v1")
    publish(REPO + "-cuda", {"torch-cuda": "v1"}, branch="v1")
    publish("stranger/scale", {"torch-cpu": "v1"}, branch="v1")
    repo = LayerRepository(REPO, layer_name="Scale", version=1)
    if case == "unreachable":
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    elif case == "repo":
        repo = LayerRepository("kernels-community/none", layer_name="Scale", version=1)
    elif case == "revision":
        repo = LayerRepository(REPO, layer_name="Scale", revision="nope")
    elif case == "version":
        repo = LayerRepository(REPO, layer_name="Scale", version=9)
    elif case == "variant":
        repo = LayerRepository(REPO + "-cuda", layer_name="Scale", version=1)
    elif case == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    elif case == "server":
        hub.fail("/api/", 500)
    elif case == "trust":
        repo = LayerRepository("stranger/scale", layer_name="Scale", version=1)
    rejected = _kernelize_reason(repo)
    assert rejected.reason is Reason.LOAD_FAILED
    assert rejected.detail.startswith(f"{error.__name__}: ")
    assert detail in rejected.detail


def test_kernelize_uses_the_hub_kernel(publish):
    publish(REPO, {"torch-cpu": "v1"}, branch="v1")
    model = nn.Sequential(Scale())
    with kernel_fx.use_kernel_mapping({"Scale": {"cpu": LayerRepository(REPO, layer_name="Scale", version=1)}}):
        kernelize(model, device="cpu")
    decision = kernel_fx.report(model).decisions[0]
    assert decision.uses_kernel and decision.variant == "torch-cpu" and decision.repository.startswith(REPO)
    torch.testing.assert_close(model(torch.ones(4)), torch.full((4,), 6.0))
