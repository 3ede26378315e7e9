"""Shared test setup: device gating, a clean mapping and dynamo per test, kernel repo builders."""

from __future__ import annotations

import os

import pytest
import torch

from kernel_fx import mapping as mapping_module

# --doctest-modules imports every .py file as a module; conftest.py files outside packages all have
# the module name "conftest", so collecting this one after tests/compile/conftest.py is loaded fails
# with "import file mismatch". Conftests hold no doctests: none is collected as a module.
collect_ignore_glob = ["kernel_repos.py", "conftest.py", "*/conftest.py"]


def pytest_configure(config):
    # Hermetic under an ambient HF_HUB_OFFLINE=1 (machines without network set it): huggingface_hub reads
    # it once, when imported, and the loopback-Hub tests would then run offline. Tests that want
    # offline set it themselves; nothing has imported huggingface_hub yet.
    os.environ.pop("HF_HUB_OFFLINE", None)


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _isolated_state():
    """Each test starts with an empty kernel mapping and a fresh dynamo."""
    token = mapping_module._MAPPING.set(mapping_module._EMPTY)
    torch._dynamo.reset()
    try:
        yield
    finally:
        mapping_module._MAPPING.reset(token)
        torch._dynamo.reset()


@pytest.fixture
def kernel_repo(tmp_path):
    """Build kernel repos in the Hub layout: `kernel_repo({"torch-cpu": {"layers.py": src}})`."""
    from kernel_repos import make_kernel_repo

    counter = iter(range(10_000))

    def build(variants, name="repo", **kwargs):
        return make_kernel_repo(tmp_path / f"{name}{next(counter)}", variants, **kwargs)

    return build
