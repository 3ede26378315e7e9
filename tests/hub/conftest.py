"""Hub tests: a loopback Hub per test, an empty cache per test, and no way out to the real Hub."""

from __future__ import annotations

import pytest
from hub_helpers import kernel_files
from hub_server import FakeHub, closed_port_url
from kernel_repos import make_kernel_repo


@pytest.fixture(autouse=True)
def hub_env(tmp_path, monkeypatch):
    """A fresh cache, no overrides or trust lists, and HF_ENDPOINT on a closed port by default."""
    monkeypatch.setenv("KERNEL_FX_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for name in ("HF_HUB_OFFLINE", "KERNEL_FX_LOCAL_KERNELS", "KERNEL_FX_TRUSTED", "KERNEL_FX_DISABLE", "LOCAL_KERNELS", "KERNELS_CACHE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "hf-cache"


@pytest.fixture
def hub(monkeypatch):
    """A started loopback Hub; HF_ENDPOINT points at it."""
    fake = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    yield fake
    fake.stop()


@pytest.fixture
def publish(hub, tmp_path):
    """Publish a test kernel: `publish("org/k", {"torch-cpu": "cpu-v1"}, branch="v1")` -> commit sha.

    Variant values are the build's TAG (or a full {file: source} dict).
    """
    counter = iter(range(10_000))

    def _publish(repo_id: str, variants: dict[str, str | dict], *, kernel_id: str | None = None, **kwargs) -> str:
        files = {v: (kernel_files(spec) if isinstance(spec, str) else spec) for v, spec in variants.items()}
        root = make_kernel_repo(tmp_path / f"src{next(counter)}", files, kernel_id=kernel_id)
        return hub.publish(repo_id, root, **kwargs)

    return _publish


@pytest.fixture
def offline(monkeypatch):
    """Switch to HF_HUB_OFFLINE=1 (call it after filling the cache)."""
    return lambda: monkeypatch.setenv("HF_HUB_OFFLINE", "1")
