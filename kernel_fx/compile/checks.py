"""The per-site checks of the compiled pass, in the order they run. Each takes a `Candidate` and
the `PassContext` and returns a `Rejected` (the site keeps its original forward, for that reason)
or None (go on). The first rejection wins.

A new check is one new file with one function, plus one line in `DEFAULT_CHECKS`.
"""

from __future__ import annotations

from ..decisions import DISABLED, Rejected
from .autotune import faster_than_original
from .decide import Candidate, Check, PassContext
from .dtensor_inputs import dtensor_inputs
from .output_check import outputs_match
from .prepare import Substitution
from .verify import numerically_close


def module_found(candidate: Candidate, context: PassContext) -> Rejected | None:
    """The call's module was found in the compiled frame (else: module not resolved, partial region, ...)."""
    return candidate.site.problem if candidate.site.module is None else None


def not_disabled(candidate: Candidate, context: PassContext) -> Rejected | None:
    """`KERNEL_FX_DISABLE` is not set."""
    return DISABLED if context.disabled else None


def kernel_planned(candidate: Candidate, context: PassContext) -> Rejected | None:
    """The planner found, loaded and validated a kernel for this condition (the eager path's rules)."""
    return candidate.plan.rejected if candidate.plan.kernel is None else None


def binds_exactly(candidate: Candidate, context: PassContext) -> Rejected | None:
    """Every argument and output of the call maps to a graph value (never a guess)."""
    return candidate.site.problem


def prepares(candidate: Candidate, context: PassContext) -> Rejected | None:
    """The kernel can be put in: traced, called, or run as an opaque op."""
    sub = candidate.substitution
    return None if isinstance(sub, Substitution) else sub


DEFAULT_CHECKS: tuple[Check, ...] = (
    module_found,
    not_disabled,
    kernel_planned,
    binds_exactly,
    dtensor_inputs,  # tensor parallel: as the kernel declares, where the placements allow
    prepares,
    outputs_match,  # the kernel's outputs are shaped like the original's
    numerically_close,  # only with verify=True
    faster_than_original,  # only with autotune=True
)
