"""`wrong_output`: the kernel's outputs must be shaped like the original's — structure, shapes
(symbolic sizes provably equal), dtypes and devices — on every path (see `Subject`)."""

from __future__ import annotations

from typing import Any

from ..decisions import Reason, Rejected
from ..errors import KernelFxError
from .pipeline import Phase, check
from .verification import output_problem


@check(Phase.SUBSTITUTION)
def wrong_output(subject: Any) -> Rejected | None:
    """Rejects a kernel whose outputs differ from the original's in structure, shape, dtype or device."""
    if not subject.settings.outputs:
        return None
    expected = subject.expected()  # first: where the original's outputs are unknown, the kernel need not run
    if expected is None:
        return None
    actual = subject.actual()
    if isinstance(actual, KernelFxError):
        return Rejected(Reason.WRONG_OUTPUT, _where(subject) + str(actual))
    if actual is None:
        return None
    problem = output_problem(expected, actual)
    return None if problem is None else Rejected(Reason.WRONG_OUTPUT, _where(subject) + problem)


def _where(subject: Any) -> str:
    return f"for inputs {subject.inputs}: " if subject.inputs else ""
