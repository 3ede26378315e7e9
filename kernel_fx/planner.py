"""The planner: which kernel a site runs under each condition, and the `Decision` that says so.

One planner serves every path — `kernelize` (eager), `hubkernels` (compiled) and
`kernelize_graph` (a GraphModule) — so the same site under the same options gets the same answer:
resolve the mapping, load the repository, validate the kernel against the forward it replaces,
and check the condition (autograd needs a backward; compiling needs `can_torch_compile` unless
the caller can run the kernel as an opaque op). Loads and plans are cached per planner.

>>> import torch
>>> from torch import nn
>>> import kernel_fx
>>> from kernel_fx.devices import Device
>>> from kernel_fx.conditions import Condition
>>> @kernel_fx.use_kernel_forward_from_hub("Double")
... class Double(nn.Module):
...     def forward(self, x):
...         return 2 * x
>>> plan = Planner(Device("cpu"), None).plan(Double(), "Double", Condition(grad=False, compiling=False))
>>> plan.kernel is None, str(plan.rejected)
(True, "no mapping: no kernel mapped for layer 'Double'")
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .checks import Verdict
from .conditions import CONDITIONS, Condition
from .decisions import CONDITION_FALSE, Decision, Measured, Outcome, Reason, Rejected
from .devices import Device, read_capability
from .errors import KernelFallbackWarning
from .hub.errors import LockfileError
from .layers import CONDITION_ATTR, LAYER_NAME_ATTR, condition_allows, condition_of, forward_override, original_signature, signature_owner
from .mapping import Choice, resolve
from .modes import Mode
from .originals import INSTALLED_ATTR, original_forward
from .repos import AnyRepository, load_layer
from .switches import disabled_by
from .validation import kernel_problem

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelPlan:
    """What runs under one condition: a kernel class (None: the original forward) and why."""

    kernel: type[nn.Module] | None
    repository: AnyRepository | None
    rejected: Rejected | None


@dataclass(frozen=True)
class SitePlan:
    """A site's plan under every condition the caller asked about, its decisions, and the forward
    those plans replace (`original`: None for a skipped site)."""

    plans: dict[Condition, KernelPlan]
    decisions: tuple[Decision, ...]
    original: Any = None
    runs_kernel: bool = field(init=False)  # some condition runs a kernel (else the site keeps its forward)
    always_kernel: bool = field(init=False)  # every condition does

    def __post_init__(self) -> None:
        object.__setattr__(self, "runs_kernel", any(p.kernel is not None for p in self.plans.values()))
        object.__setattr__(self, "always_kernel", all(p.kernel is not None for p in self.plans.values()))


class Planner:
    """Resolves, loads and validates kernels for one device, caching per layer and class.

    `conditions` are the conditions a site is planned for (all four, or one fixed mode);
    `compile_only` makes eager calls use the compile-able kernels too (`needs_torch_compile`);
    `opaque_ok` plans a kernel with `can_torch_compile = False` under compiling conditions
    instead of rejecting it, for the graph pass that runs it as an opaque op.
    """

    def __init__(self, device: Device, index: int | None, *, conditions: tuple[Condition, ...] = CONDITIONS,
                 compile_only: bool = False, opaque_ok: bool = False) -> None:
        self.device = device
        self.conditions = conditions
        self.compile_only = compile_only
        self.opaque_ok = opaque_ok
        self.backend = "metal" if device.type == "mps" else device.type
        self._index = index
        self._capability: int | RuntimeError | None = None
        self._loaded: dict[AnyRepository, type[nn.Module] | Exception] = {}
        self._plans: dict[tuple[str, Any, Condition], KernelPlan] = {}
        self._sites: dict[tuple, SitePlan] = {}
        self._by_class: dict[tuple, SitePlan] = {}

    def capability(self) -> int:
        """The device's compute capability, read once (raises when it cannot be read)."""
        if self._capability is None:
            try:
                self._capability = read_capability(self.device.type, self._index)
            except RuntimeError as exc:
                self._capability = exc
        if isinstance(self._capability, RuntimeError):
            raise self._capability
        return self._capability

    def site(self, module: nn.Module, layer_name: str) -> SitePlan:
        """Plans, decisions and forward of a site; sites of one class share them (a layer's
        `kernel_condition` is asked first, per instance). An instance with nothing of its own (no
        forward, layer name or condition) is answered from its class's entry: one look-up."""
        own = vars(module)
        forward = own.get("forward")
        plain = (LAYER_NAME_ATTR not in own and CONDITION_ATTR not in own
                 and (forward is None or (getattr(forward, INSTALLED_ATTR, False) and forward.previous is None)))
        if plain:
            found = self._by_class.get((type(module), layer_name))
            if found is not None:
                return found
        planned = self._site(module, layer_name)
        if plain and condition_of(type(module)) is None:
            self._by_class[(type(module), layer_name)] = planned
        return planned

    def _site(self, module: nn.Module, layer_name: str) -> SitePlan:
        overridden = overrides_forward(type(module), layer_name, module)
        if overridden is not None:
            return self.skipped(module, layer_name, overridden)
        if not condition_allows(module):
            # `kernels`' INFO line, word for word: its users filter logs on it.
            logger.info("Skipping kernelization for `%s` using `%s` due to kernel_condition.", type(module).__name__, layer_name)
            return self.skipped(module, layer_name, CONDITION_FALSE)
        original = original_forward(module)
        key = (layer_name, type(module), original, signature_owner(module))
        if key not in self._sites:
            plans = {c: self._plan(module, layer_name, original, c) for c in self.conditions}
            if self.compile_only:  # eager calls too use only compile-able kernels
                plans = {c: plans[Condition(c.grad, True)] for c in self.conditions}
            self._sites[key] = self._site_plan(module, layer_name, original, plans)
        return self._sites[key]

    def skipped(self, module: nn.Module, layer_name: str, rejected: Rejected) -> SitePlan:
        """A site that keeps its original forward for `rejected` (filtered out, disabled)."""
        key = (layer_name, type(module), rejected)
        if key not in self._sites:
            plan = KernelPlan(None, None, rejected)
            self._sites[key] = self._site_plan(module, layer_name, None, {c: plan for c in self.conditions})
        return self._sites[key]

    def plan(self, module: nn.Module, layer_name: str, condition: Condition) -> KernelPlan:
        """What runs at a site of `module` under one `condition` (the graph paths' question)."""
        overridden = overrides_forward(type(module), layer_name, module)
        if overridden is not None:
            return KernelPlan(None, None, overridden)
        if not condition_allows(module):
            return KernelPlan(None, None, CONDITION_FALSE)
        return self._plan(module, layer_name, original_forward(module), condition)

    def plan_class(self, cls: type[nn.Module], layer_name: str, condition: Condition) -> KernelPlan:
        """The same for any instance of `cls` that has no forward of its own (trace-time choices).

        A class with a `kernel_condition` keeps its original here: the condition is asked of an
        instance, and a choice made while dynamo traces has none."""
        overridden = overrides_forward(cls, layer_name)
        if overridden is not None:
            return KernelPlan(None, None, overridden)
        if condition_of(cls) is not None:
            return KernelPlan(None, None, Rejected(
                Reason.FILTERED, f"{cls.__name__} has a kernel_condition, which needs the module; this call was decided while dynamo traced"))
        key = (layer_name, cls.forward, condition)
        if key not in self._plans:
            self._plans[key] = self._fresh_plan(cls.__name__, layer_name, cls.forward, lambda: inspect.signature(cls.forward), condition)
        return self._plans[key]

    def _site_plan(self, module: nn.Module, layer_name: str, original: Any, plans: dict[Condition, KernelPlan]) -> SitePlan:
        return SitePlan(plans, site_decisions(module, layer_name, plans, self.device), original)

    def _plan(self, module: nn.Module, layer_name: str, original: Any, condition: Condition) -> KernelPlan:
        owner = signature_owner(module)
        key = (layer_name, original, owner, condition)
        if key not in self._plans:
            self._plans[key] = self._fresh_plan(type(module).__name__, layer_name, original, lambda: original_signature(module),
                                                condition, owner)
        return self._plans[key]

    def _fresh_plan(self, owner: str, layer_name: str, original: Any, signature: Callable[[], inspect.Signature],
                    condition: Condition, signature_from: object = None) -> KernelPlan:
        choice = resolve(layer_name, self.device, condition.mode, capability=self.capability)
        if isinstance(choice, Rejected):
            return KernelPlan(None, None, choice)
        kernel = self._load(choice)
        repo = choice.repository
        if isinstance(kernel, Exception):
            return KernelPlan(None, repo, Rejected(Reason.LOAD_FAILED, f"{type(kernel).__name__}: {kernel}"))
        problem = kernel_problem(kernel, original, signature, signature_from if signature_from is not None else original)
        if problem:
            where = f"kernel layer {layer_name} from {repository_label(repo)}"
            return KernelPlan(None, repo, Rejected(Reason.VALIDATION_FAILED, f"{where} does not fit {owner}: {problem}"))
        if condition.grad and not getattr(kernel, "has_backward", True):
            return KernelPlan(None, repo, self._mode_refused(choice, layer_name, Mode.TRAINING, "kernel has no backward (has_backward = False)"))
        if condition.compiling and not self.opaque_ok and not getattr(kernel, "can_torch_compile", False):
            return KernelPlan(None, repo, self._mode_refused(choice, layer_name, Mode.TORCH_COMPILE, "kernel has can_torch_compile = False"))
        return KernelPlan(kernel, repo, None)

    @staticmethod
    def _mode_refused(choice: Choice, layer_name: str, needed: Mode, why: str) -> Rejected:
        """The kernel cannot serve the condition. When the mapping entry was written for exactly that
        (a TRAINING entry without backward, a TORCH_COMPILE entry that cannot be compiled), the user's
        explicit intent is not honoured: warn, and say so in the report."""
        reason = Reason.TRAINING_FALLBACK if needed is Mode.TRAINING else Reason.NOT_COMPILABLE
        if needed not in choice.entry_mode:
            return Rejected(reason, why)
        detail = f"{why}, but the mapping's {choice.entry_mode} entry for {layer_name!r} names it ({repository_label(choice.repository)})"
        warnings.warn(f"kernel_fx: {detail}; the original forward runs instead.", KernelFallbackWarning, stacklevel=2)
        return Rejected(reason, detail)

    def _load(self, choice: Choice) -> type[nn.Module] | Exception:
        repo = choice.repository
        if repo not in self._loaded:
            try:
                self._loaded[repo] = load_layer(repo, self.backend)
            except LockfileError:
                raise  # a lock that was asked for and cannot be used is a configuration error, never a fallback
            except Exception as exc:  # every load failure becomes a recorded fallback reason
                logger.warning("kernel_fx: could not load %s: %s", repository_label(repo), exc)
                self._loaded[repo] = exc
        return self._loaded[repo]


def overrides_forward(cls: type, layer_name: str, module: nn.Module | None = None) -> Rejected | None:
    """Why a subclass of a marked class keeps its own forward (it computes something else under the
    inherited name), or None. Every path asks this first, so eager and compiled runs agree. A
    module that carries its own layer name (an instance attribute) is marked itself."""
    if module is not None and LAYER_NAME_ATTR in vars(module):
        return None
    found = forward_override(cls)
    if found is None:
        return None
    sub, marked = found
    return Rejected(Reason.OVERRIDES_FORWARD,
                    f"{sub.__name__} overrides the forward of {marked.__name__}, which is marked {layer_name!r}; "
                    f"mark {sub.__name__} itself to give it a kernel")


# -- decisions ------------------------------------------------------------------------------------


def build_decision(*, path: str, layer_name: str, module_class: str, device: str, mode: str, outcome: Outcome,
                   plan: KernelPlan | None, rejected: Rejected | None, call_index: int | None = None,
                   path_kind: str = "eager", repository: str | None = None, measured: Measured | None = None,
                   verdict: Verdict | None = None) -> Decision:
    """The one way every path records a site: where the kernel came from is read off `plan`
    (only when a kernel runs); `repository` overrides it (e.g. "installed by kernelize"); the
    checks' `verdict` gives the figures by check name (a `Measured` among them is the verify error)."""
    figures = verdict.figures if verdict is not None else ()
    if measured is None:
        measured = next((f for _name, f in figures if isinstance(f, Measured)), None)
    kernel = plan.kernel if plan is not None and outcome is not Outcome.ORIGINAL else None
    source = _source_of(kernel)
    repo = plan.repository if plan is not None else None
    if repository is None:
        repository = str(source) if source else (repository_label(repo) if repo is not None else None)
    return Decision(
        path=path, layer_name=layer_name, module_class=module_class, device=device, mode=mode, outcome=outcome,
        repository=repository, variant=source.variant if source else None, rejected=rejected,
        unpinned=bool(getattr(repo, "unpinned", False)), call_index=call_index, path_kind=path_kind, measured=measured,
        figures=figures,
    )


def site_decisions(module: nn.Module, layer_name: str, plans: dict[Condition, KernelPlan], device: Device) -> tuple[Decision, ...]:
    """An eager site's decisions: one per group of conditions that run the same thing."""
    groups: dict[KernelPlan, list[Condition]] = {}
    for condition, plan in plans.items():
        groups.setdefault(plan, []).append(condition)
    return tuple(
        build_decision(
            path="", layer_name=layer_name, module_class=type(module).__name__, device=str(device),
            mode="any" if len(conditions) == len(CONDITIONS) else ", ".join(str(c.mode) for c in conditions),
            outcome=Outcome.ORIGINAL if plan.kernel is None else Outcome.KERNEL, plan=plan, rejected=plan.rejected,
        )
        for plan, conditions in groups.items()
    )


def _source_of(kernel: type | None) -> Any:
    from .hub.importer import source_of  # the hub package loads on first use

    return None if kernel is None else source_of(kernel)


def repository_label(repo: AnyRepository) -> str:
    """`org/repo@v1`, `org/repo@<rev>` or a local path: how reports name a repository."""
    for attr in ("repo_id", "repo_path"):
        value = getattr(repo, attr, None)
        if value is not None:
            rev = getattr(repo, "revision", None) or (f"v{repo.version}" if getattr(repo, "version", None) is not None else None)
            return f"{value}@{rev}" if rev else str(value)
    return repr(repo)


def is_disabled() -> bool:
    """`KERNEL_FX_DISABLE` or `DISABLE_KERNEL_MAPPING` is on (see `switches`): every path keeps every
    original forward. A value that is no switch value raises `SettingError`."""
    return disabled_by() is not None
