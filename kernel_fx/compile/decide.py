"""Decide every site of a graph: run the per-site checks in order; the first `Rejected` keeps the
original forward, and a site that passes them all gets its prepared substitution.

A check is a function `(candidate, context) -> Rejected | None` (see `checks.py`, where the list
lives). A `Candidate` gives it what it may ask about one site — its plan, its prepared
substitution — computed lazily and once; the `PassContext` holds what one graph's checks share:
options, the graph and its example inputs, the inner compiler, planners, and `memo` for a
check's own per-graph state. Nothing here mutates the graph: `apply` does that afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from ..checks import Check, CheckResult, CheckSettings, Verdict, run_checks
from ..conditions import Condition
from ..decisions import Decision, Measured, Outcome, Reason, Rejected, raise_unless_allowed
from ..devices import Device
from ..errors import KernelFxError
from ..graph_records import SubstitutionKind
from ..layers import extensible_modules, layer_name_of
from ..originals import installed_forward, original_forward
from ..planner import KernelPlan, Planner, build_decision, is_disabled, repository_label
from . import output_check, trace_time, verify
from .prepare import Substitution, TraceCache, prepare
from .sites import Site

if TYPE_CHECKING:
    from .options import Options

Compiler = Callable[[fx.GraphModule, list[Any]], Callable[..., Any]]


@dataclass
class PassContext:
    """What the checks of one graph share. `memo(key, make)` keeps a check's per-graph state."""

    options: Options
    gm: fx.GraphModule
    example_inputs: Sequence[Any]
    sites: Sequence[Site]
    compile_fn: Compiler
    inner: str
    disabled: bool = field(default_factory=is_disabled)
    trace_cache: TraceCache = field(default_factory=TraceCache)
    planners: dict[str, Planner] = field(default_factory=dict)
    memos: dict[str, Any] = field(default_factory=dict)

    def memo(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self.memos:
            self.memos[key] = make()
        return self.memos[key]

    def planner(self, device: Device) -> Planner:
        if device.type not in self.planners:
            self.planners[device.type] = Planner(device, None, opaque_ok=True)
        return self.planners[device.type]


@dataclass
class Candidate:
    """One site on its way to a decision, as the checks see it (a `kernel_fx.checks.Subject` of
    the compiled path): the condition and device it is planned for, and (on first use) its plan,
    its prepared substitution and the outputs the checks compare."""

    site: Site
    context: PassContext
    path_kind: str = "compiled"
    inputs: str = ""  # the call's values are symbolic here: reasons name no input shapes

    @property
    def layer_name(self) -> str:
        return self.site.layer_name

    @property
    def module(self) -> nn.Module | None:
        return self.site.module

    @property
    def kernel(self) -> type | None:
        plan = self.__dict__.get("plan")
        return plan.kernel if plan is not None else None

    @property
    def settings(self) -> CheckSettings:
        return CheckSettings(outputs=True, verify=self.context.options.verify)

    def expected(self) -> Any:
        return output_check.expected_outputs(self)

    def actual(self) -> Any:
        return output_check.kernel_outputs(self)

    def measure(self) -> Measured | None:
        return verify.measure_candidate(self)

    @cached_property
    def condition(self) -> Condition:
        return Condition(self.site.needs_grad, True, fixed=self.context.options.mode)

    @cached_property
    def device(self) -> Device:
        if self.context.options.device is not None:
            return Device(self.context.options.device)
        device = self.site.device or torch.device("cpu")
        if device.type == "cuda" and getattr(torch.version, "hip", None):
            return Device("rocm")
        return Device.parse(device)

    @cached_property
    def plan(self) -> KernelPlan:
        assert self.site.module is not None  # checks ask for a plan only once the module is found
        return self.context.planner(self.device).plan(self.site.module, self.site.layer_name, self.condition)

    @cached_property
    def substitution(self) -> Substitution | Rejected:
        assert self.site.module is not None and self.plan.kernel is not None
        return prepare(self.site, self.plan.kernel, original_forward(self.site.module), self.context.trace_cache)


@dataclass(frozen=True)
class SiteDecision:
    """A site's decision, and its substitution when a kernel goes in (`traced_in`: the kernel was
    put in while dynamo traced, so the graph already holds it)."""

    decision: Decision
    substitution: Substitution | None = None
    traced_in: Site | None = None
    enclosed: tuple[Decision, ...] = ()  # marked calls inside a traced-in kernel's original, never traced

    @property
    def decisions(self) -> tuple[Decision, ...]:
        return (self.decision, *self.enclosed)


def decide(sites: Sequence[Site], context: PassContext, checks: Sequence[Check]) -> list[SiteDecision]:
    """One `SiteDecision` per site, in order; raises `KernelizeError` on a fallback that
    `use_fallback=False` forbids (the rule in `decisions`)."""
    results: list[SiteDecision] = []
    replaced: set[int] = set()
    for i, site in enumerate(sites):
        result = _decide_one(sites, i, replaced, context, checks)
        if result.substitution is not None or result.traced_in is not None:
            replaced.add(i)  # a kernel replaces the whole call: marked calls inside run their original, as eagerly
        if not context.options.use_fallback and result.decision.outcome is Outcome.ORIGINAL:
            raise_unless_allowed(result.decision.rejected,
                                 f"{site.path or '<root>'} call {site.call_index} (layer {site.layer_name!r})",
                                 "Pass options={'use_fallback': True} to keep the original forward.")
        results.append(result)
    return results


def _decide_one(sites: Sequence[Site], i: int, replaced: set[int], context: PassContext, checks: Sequence[Check]) -> SiteDecision:
    site = sites[i]
    candidate = Candidate(site, context)
    enclosing = _replaced_ancestor(sites, i, replaced)
    if enclosing is not None:
        return SiteDecision(_enclosed(candidate, site.module, site.path, enclosing))
    if site.trace_plan:
        return _chosen_at_trace_time(candidate, {s.path for s in sites})
    installed = _installed_by_kernelize(candidate)
    if installed is not None:
        return SiteDecision(installed)
    verdict = run_checks(checks, candidate, "compiled")
    if verdict.rejected is not None:
        plan = candidate.__dict__.get("plan")  # only a plan already made: a rejection may come before one
        return SiteDecision(_decision(site, candidate if plan is not None else None, Outcome.ORIGINAL, verdict.rejected,
                                      verdict=verdict))
    sub = candidate.substitution
    if not isinstance(sub, Substitution):  # a pipeline without the `prepares` check
        raise KernelFxError(f"the checks let {site.path or '<root>'} through without a prepared kernel: {sub}")
    outcome = Outcome.OPAQUE_KERNEL if sub.how is SubstitutionKind.OPAQUE else Outcome.KERNEL
    return SiteDecision(_decision(site, candidate, outcome, sub.why_opaque, verdict=verdict), sub)


def _chosen_at_trace_time(candidate: Candidate, graph_paths: set[str]) -> SiteDecision:
    """A call carrying Python state was decided while dynamo traced it (see trace_time.py)."""
    site = candidate.site
    plan = trace_time.PLANS[site.trace_plan]
    found = trace_time.FINDINGS.get(site.trace_plan)
    verdict = None if found is None else Verdict(found.rejected, tuple((n, CheckResult(None, f)) for n, f in found.figures))
    if plan.kernel is None:
        return SiteDecision(_decision(site, candidate, Outcome.ORIGINAL, plan.rejected, plan=plan, verdict=verdict))
    # The original was not traced: the marked calls it would make and the kernel does not are not
    # in the graph. Report them as eager kernelize lists them, each with why it does not run.
    inner = [(f"{site.path}.{path}", module) for path, module in extensible_modules(site.module) if path] if site.module else []
    enclosed = tuple(_enclosed(candidate, module, path, site) for path, module in inner if path not in graph_paths)
    return SiteDecision(_decision(site, candidate, Outcome.KERNEL, None, plan=plan), traced_in=site, enclosed=enclosed)


def _enclosed(candidate: Candidate, module: nn.Module | None, path: str, outer: Site) -> Decision:
    """A marked call inside a call that runs a kernel: its own reason when it would keep its
    original anyway (as eager kernelize reports it), else that the enclosing kernel replaced it."""
    layer_name = layer_name_of(module) if module is not None else candidate.site.layer_name
    plan = None
    if module is not None and layer_name is not None:
        plan = candidate.context.planner(candidate.device).plan(module, layer_name, candidate.condition)
    rejected = plan.rejected if plan is not None and plan.kernel is None else Rejected(
        Reason.ENCLOSED, f"inside {outer.path or '<root>'} ({outer.layer_name}), which runs a kernel")
    return build_decision(path=path, layer_name=layer_name or "?", module_class=type(module).__name__ if module is not None else "?",
                          device=str(candidate.device), mode=str(candidate.condition.mode), outcome=Outcome.ORIGINAL, plan=plan,
                          rejected=rejected, call_index=candidate.site.call_index if module is candidate.site.module else outer.call_index,
                          path_kind="compiled")


def _installed_by_kernelize(candidate: Candidate) -> Decision | None:
    """A kernel `kernelize` installed ran while dynamo traced the call: keep it, substitute nothing."""
    site = candidate.site
    eager = installed_forward(site.module) if site.module is not None else None
    if eager is None or site.marked:
        return None
    repo = eager.repos[candidate.condition.index % 4]
    if repo is None:
        return None
    return _decision(site, candidate, Outcome.KERNEL, None, repository=f"{repository_label(repo)} (installed by kernelize)", plan=None)


def _replaced_ancestor(sites: Sequence[Site], i: int, replaced: set[int]) -> Site | None:
    parent = sites[i].enclosing
    while parent is not None:
        if parent in replaced:
            return sites[parent]
        parent = sites[parent].enclosing
    return None


_UNPLANNED = object()


def _decision(site: Site, candidate: Candidate | None, outcome: Outcome, rejected: Rejected | None,
              repository: str | None = None, plan: Any = _UNPLANNED, verdict: Verdict | None = None) -> Decision:
    if plan is _UNPLANNED:
        plan = candidate.plan if candidate is not None else None
    if candidate is not None:
        device, mode = str(candidate.device), str(candidate.condition.mode)
    else:
        device, mode = (site.device.type if site.device is not None else "?"), "-"
    return build_decision(
        path=site.path, layer_name=site.layer_name, module_class=site.module_class, device=device, mode=mode,
        outcome=outcome, plan=plan, rejected=rejected, call_index=site.call_index, path_kind="compiled",
        repository=repository, verdict=verdict,
    )
