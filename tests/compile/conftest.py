"""Fixtures of the compile tests: kernel mappings of temp kernel repos, dynamo's counters, a fixed seed."""

from __future__ import annotations

import pytest
import torch
from helpers_compile import mapping_for


@pytest.fixture
def mapping(kernel_repo):
    """`mapping(Scale=src, Mix=src)`: a kernel mapping of temp kernel repos, by layer name."""
    return lambda **sources: mapping_for(kernel_repo, **sources)


@pytest.fixture
def counters():
    """Dynamo's counters, cleared: `counters["stats"]["unique_graphs"]` counts compiles."""
    from torch._dynamo.utils import counters as dynamo_counters

    dynamo_counters.clear()
    yield dynamo_counters
    dynamo_counters.clear()


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)
