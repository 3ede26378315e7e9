"""`numerically_different`: with verify on, the kernel's outputs must be within the tolerance of
the original's (run in float64 where it can be); the measured error is this check's figures."""

from __future__ import annotations

from typing import Any

from ..decisions import Reason, Rejected
from .pipeline import CheckResult, Phase, check


@check(Phase.SUBSTITUTION)
def numerically_different(subject: Any) -> CheckResult | None:
    """Rejects a kernel whose numbers are outside the tolerance (only with verify=True)."""
    if subject.settings.verify is None:
        return None
    measured = subject.measure()
    if measured is None:
        return None
    return CheckResult(None if measured.within else Rejected(Reason.NUMERICALLY_DIFFERENT, str(measured)), measured)
