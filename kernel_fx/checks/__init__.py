"""The check pipeline below every path (eager, compiled, trace-time, kernelized-then-compiled, fx).

A check is a named function of one `Subject` in a declared `Phase`; paths run `SHARED_CHECKS`
plus their own and any passed by the user (`kernelize(..., checks=[...])`,
`HubKernelsBackend(checks=[...])`), in phase order, and record every result by check name.

>>> from kernel_fx.decisions import Reason, Rejected
>>> @check(Phase.SUBSTITUTION)
... def not_for_scale(subject):
...     if subject.layer_name == "Scale":
...         return Rejected(Reason.REFUSED_BY_CHECK, "Scale keeps its original here")
>>> not_for_scale.name, not_for_scale.phase.name
('not_for_scale', 'SUBSTITUTION')
"""

from __future__ import annotations

from .numbers import numerically_different
from .outputs import wrong_output
from .pipeline import PATHS, Check, CheckResult, Phase, Verdict, check, ordered, run_checks
from .subject import CheckSettings, Subject

# The checks every path runs, in phase order; a path adds its own (the graph pass: binding,
# preparing, autotune) and the user's.
SHARED_CHECKS: tuple[Check, ...] = (wrong_output, numerically_different)

__all__ = ["PATHS", "SHARED_CHECKS", "Check", "CheckResult", "CheckSettings", "Phase", "Subject", "Verdict", "check",
           "numerically_different", "ordered", "run_checks", "wrong_output"]
