"""The CI-sized fuzz run (issue 14): seeded random models, eager vs kernelized vs compiled with
`hubkernels` (inner eager / aot_eager, inductor on two cases), gradients and kernel step
counters too. A wrong output or a crash fails; a site that keeps its original with a reason is
fine. The long run is benchmarks/fuzz_long.py (same cases, more seeds)."""

from __future__ import annotations

import logging

import pytest
from fuzzing import build_repos, make_case, run_case

CI_SEEDS = range(10_000, 10_030)  # not the long run's first seeds: CI adds cases it never saw
INDUCTOR_SEEDS = (20_000, 20_001)


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    return build_repos(tmp_path_factory.mktemp("fuzz_kernels"))


@pytest.fixture(autouse=True)
def _quiet_fallbacks():
    """Kernels falling back at run time warn; keep that out of the output, and give the level back
    (tests elsewhere assert on kernel_fx's warnings)."""
    logger = logging.getLogger("kernel_fx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def _check(seed: int, repos, inductor: bool = False) -> None:
    case = make_case(seed, inductor=inductor)
    result = run_case(case, repos)
    assert not result.failed, f"{case}\n" + "\n".join(result.wrong + result.crashed)
    assert result.runs == 1 + len(case.inners)


@pytest.mark.parametrize("seed", CI_SEEDS)
def test_random_model_matches_eager(seed, repos):
    _check(seed, repos)


@pytest.mark.parametrize("seed", INDUCTOR_SEEDS)
def test_random_model_matches_eager_under_inductor(seed, repos):
    _check(seed, repos, inductor=True)


def test_the_fuzz_sees_a_wrong_kernel(tmp_path):
    """The comparison can fail: a kernel off by a little is reported wrong, not skipped."""
    import fuzzing

    real = fuzzing.KERNEL_BODIES["FzScale"]
    fuzzing.KERNEL_BODIES["FzScale"] = real.replace("self.shift)", "self.shift + 1e-2)")
    try:
        repos = build_repos(tmp_path)
    finally:
        fuzzing.KERNEL_BODIES["FzScale"] = real
    case = make_case(0)
    case.families, case.plan = {"l0": "FzScale"}, (("call", "l0", "FzScale", (0,), False, ()),)
    case.flavours, case.training, case.inners = {"FzScale": "traced"}, False, ("eager",)
    result = run_case(case, repos)
    assert result.wrong and {w.split(":")[0] for w in result.wrong} == {f"kernelize batch {case.batch}", f"eager batch {case.batch}"}
