"""The check pipeline every path runs: checks in declared phases, each returning a typed result.

A `Check` names itself and the `Phase` it belongs to; `ordered` puts checks in phase order (the
order within a phase is the order given), so a check added by a user lands where its phase says,
never by position in a list. `run_checks` runs them against a `Subject` (the site as one path sees
it, see `subject.py`) until one rejects, and returns a `Verdict`: the rejection, if any, and every
check's `CheckResult` by check name — what the path records in its `Decision` and the report shows.

>>> from kernel_fx.decisions import Reason, Rejected
>>> @check(Phase.SUBSTITUTION)
... def never_on_tuesday(subject):
...     return Rejected(Reason.REFUSED_BY_CHECK, "it is Tuesday")
>>> @check(Phase.PLAN, name="looked")
... def looked(subject):
...     return CheckResult(figures="fine")
>>> [c.name for c in ordered([never_on_tuesday, looked])]
['looked', 'never_on_tuesday']
>>> verdict = run_checks(ordered([never_on_tuesday, looked]), subject=None, path="eager")
>>> str(verdict.rejected), verdict.rejected.check, dict(verdict.results)["looked"].figures
('refused by a check: it is Tuesday', 'never_on_tuesday', 'fine')
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any

from ..decisions import Reason, Rejected
from ..errors import ArgumentTypeError

# The paths a check can decide on: the eager first call of an input signature, the compiled graph
# pass, a call decided while dynamo traced it (it carries Python state), a kernel `kernelize`
# installed that dynamo then traces (any backend), and `kernelize_graph` on a GraphModule.
PATHS = frozenset({"eager", "compiled", "trace-time", "kernelized", "fx"})


class Phase(IntEnum):
    """When a check runs. PLAN: about the site and its plan, before the kernel is put in;
    PREPARE: putting the kernel in (tracing it, or the opaque op); SUBSTITUTION: about the prepared
    kernel on this call — its outputs, its numbers, its speed."""

    PLAN = 1
    PREPARE = 2
    SUBSTITUTION = 3


@dataclass(frozen=True)
class CheckResult:
    """What one check found.

    Attributes:
        rejected: why the site keeps its original forward (None: the check lets the kernel run).
        figures: what the check measured (e.g. a `Measured` error, timings), shown in the report;
            any value with a readable `str`.
    """

    rejected: Rejected | None = None
    figures: Any = None


@dataclass(frozen=True)
class Check:
    """One named check of the pipeline.

    Attributes:
        name: how decisions and the report refer to it.
        phase: when it runs (see `Phase`).
        fn: `fn(subject) -> CheckResult | Rejected | None` (None: nothing to say).
        paths: the paths it decides on (default: all of `PATHS`); a check about something only
            one path has (a graph binding, the opaque op) names that path.
    """

    name: str
    phase: Phase
    fn: Callable[[Any], CheckResult | Rejected | None]
    paths: frozenset[str] = PATHS

    def __post_init__(self) -> None:
        if not isinstance(self.phase, Phase):
            raise ArgumentTypeError(f"Check {self.name!r} has phase {self.phase!r}; use kernel_fx.checks.Phase.PLAN, PREPARE or SUBSTITUTION.")
        unknown = set(self.paths) - PATHS
        if unknown:
            raise ArgumentTypeError(f"Check {self.name!r} names unknown paths {sorted(unknown)}; paths are {sorted(PATHS)}.")

    def __call__(self, subject: Any) -> CheckResult:
        found = self.fn(subject)
        if found is None:
            return CheckResult()
        if isinstance(found, Rejected):
            return CheckResult(replace(found, check=found.check or self.name))
        if isinstance(found, CheckResult):
            if found.rejected is not None and found.rejected.check is None:
                return replace(found, rejected=replace(found.rejected, check=self.name))
            return found
        raise ArgumentTypeError(f"Check {self.name!r} returned {found!r}; a check returns a CheckResult, a Rejected or None.")


def check(phase: Phase, *, name: str | None = None, paths: Iterable[str] = PATHS) -> Callable[[Callable[..., Any]], Check]:
    """Make a function `fn(subject)` a `Check` of `phase`, named after the function by default."""
    def make(fn: Callable[..., Any]) -> Check:
        return Check(name or fn.__name__, phase, fn, frozenset(paths))

    return make


def ordered(checks: Iterable[Check]) -> tuple[Check, ...]:
    """`checks` in phase order, keeping the given order within a phase; names must be unique."""
    found = tuple(checks)
    for c in found:
        if not isinstance(c, Check):
            raise ArgumentTypeError(f"{c!r} is not a kernel_fx.checks.Check; make one with @kernel_fx.checks.check(Phase.SUBSTITUTION).")
    names = [c.name for c in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ArgumentTypeError(f"Checks must have unique names; {', '.join(map(repr, twice))} appear more than once.")
    return tuple(sorted(found, key=lambda c: c.phase))


@dataclass(frozen=True)
class Verdict:
    """The pipeline's answer for one subject.

    Attributes:
        rejected: the first rejection (its `check` names who made it), or None: the kernel runs.
        results: `(check name, CheckResult)` for every check that ran, in order.
    """

    rejected: Rejected | None = None
    results: tuple[tuple[str, CheckResult], ...] = field(default=())

    @property
    def figures(self) -> tuple[tuple[str, Any], ...]:
        """`(check name, figures)` of the checks that measured something."""
        return tuple((name, r.figures) for name, r in self.results if r.figures is not None)

    def merged(self, later: Verdict) -> Verdict:
        return Verdict(later.rejected, self.results + later.results)


def run_checks(checks: Iterable[Check], subject: Any, path: str, phases: Iterable[Phase] | None = None) -> Verdict:
    """Run the checks that decide on `path` (and are of `phases`, default all) in order, until one
    rejects. A check that raises rejects the kernel with `Reason.REFUSED_BY_CHECK`, the exception
    kept on the rejection: a broken check never lets an unchecked kernel through silently."""
    wanted = set(phases) if phases is not None else None
    results: list[tuple[str, CheckResult]] = []
    for c in checks:
        if path not in c.paths or (wanted is not None and c.phase not in wanted):
            continue
        try:
            result = c(subject)
        except Exception as exc:  # noqa: BLE001 - any failure of a check is a recorded rejection
            result = CheckResult(Rejected(Reason.REFUSED_BY_CHECK, f"check {c.name} raised {type(exc).__name__}: {exc}",
                                          check=c.name, exception=exc))
        results.append((c.name, result))
        if result.rejected is not None:
            return Verdict(result.rejected, tuple(results))
    return Verdict(None, tuple(results))
