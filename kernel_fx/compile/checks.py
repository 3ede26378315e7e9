"""The checks of the compiled graph pass, in declared phases: the graph pass's own (the call's
module found, binding exact, DTensor placements, the kernel put in) and the checks every
path shares (`kernel_fx.checks.SHARED_CHECKS`: wrong output, numerically different). Each is a
`kernel_fx.checks.Check` run on a `Candidate` (the site as the graph pass sees it); the first
rejection wins, and every result is recorded by check name in the site's `Decision`. Autotune is
not a per-site check: it times whole graphs after every site is decided (`autotune.tune`), and
records its figures in the decisions under `faster_in_graph`.

A new check for every path is one file in `kernel_fx/checks/` and one line in `SHARED_CHECKS`;
one for this pass only is one file here and one line in `DEFAULT_CHECKS`.
"""

from __future__ import annotations

from ..checks import SHARED_CHECKS, Check, Phase, check, ordered
from ..decisions import DISABLED, Rejected
from .decide import Candidate
from .dtensor_inputs import dtensor_inputs
from .prepare import Substitution

COMPILED = ("compiled",)


@check(Phase.PLAN, paths=COMPILED)
def module_found(candidate: Candidate) -> Rejected | None:
    """The call's module was found in the compiled frame (else: module not resolved, partial region, ...)."""
    return candidate.site.problem if candidate.site.module is None else None


@check(Phase.PLAN, paths=COMPILED)
def not_disabled(candidate: Candidate) -> Rejected | None:
    """`KERNEL_FX_DISABLE` is not set."""
    return DISABLED if candidate.context.disabled else None


@check(Phase.PLAN, paths=COMPILED)
def kernel_planned(candidate: Candidate) -> Rejected | None:
    """The planner found, loaded and validated a kernel for this condition (the eager path's rules)."""
    return candidate.plan.rejected if candidate.plan.kernel is None else None


@check(Phase.PLAN, paths=COMPILED)
def binds_exactly(candidate: Candidate) -> Rejected | None:
    """Every argument and output of the call maps to a graph value (never a guess)."""
    return candidate.site.problem


@check(Phase.PREPARE, paths=COMPILED)
def prepares(candidate: Candidate) -> Rejected | None:
    """The kernel can be put in: traced, called, or run as an opaque op."""
    sub = candidate.substitution
    return None if isinstance(sub, Substitution) else sub


DEFAULT_CHECKS: tuple[Check, ...] = ordered((
    module_found,
    not_disabled,
    kernel_planned,
    binds_exactly,
    Check("dtensor_inputs", Phase.PLAN, dtensor_inputs, frozenset(COMPILED)),  # tensor parallel: as the kernel declares
    prepares,
    *SHARED_CHECKS,  # wrong_output; numerically_different (verify=True)
))
