"""The eager path: give each extensible module instance its kernel's forward, per instance.

>>> import torch
>>> from torch import nn
>>> import kernel_fx
>>> @kernel_fx.use_kernel_forward_from_hub("Scale")
... class Scale(nn.Module):
...     def forward(self, x):
...         return 2 * x
>>> model = nn.Sequential(Scale())
>>> _ = kernelize(model, device="cpu")       # no mapping: every site keeps its forward
>>> kernel_fx.report(model).summary()
'1 site: 0 kernel, 1 original (no mapping: 1)'
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..checks import Check, ordered
from ..checks.calls import CallChecks, Finding
from ..checks.verification import Verify
from ..conditions import CONDITIONS, Condition
from ..decisions import DISABLED, FILTERED, Decision, KernelizeFallback, Outcome, Reason, Rejected, kernels_phrase, raise_unless_allowed
from ..devices import Device, device_index, model_device
from ..dtensor import fallbacks as dtensor_fallbacks
from ..errors import ArgumentTypeError, KernelFxError, MappingError
from ..layers import HUB_FUNCS_ATTR, LAYER_NAME_ATTR, extensible_modules, hub_function_hosts, mark_hub_classes
from ..modes import Mode, check_kernelize_mode
from ..originals import INSTALLED_ATTR, installed_forward
from ..planner import KernelPlan, Planner, SitePlan, repository_label
from ..report import Report
from ..switches import disabled_by
from .forwards import ForwardPlan, make_forward, plan_forward
from .hub_forwards import HUB_REPO_ATTR, release_hub_forwards

SITES_ATTR = "_kernel_fx_sites"
NOTES_ATTR = "_kernel_fx_notes"
FilterFn = Callable[[nn.Module, str], bool]


def kernelize(
    model: nn.Module,
    *,
    mode: Mode | None = None,
    device: str | torch.device | None = None,
    needs_torch_compile: bool = False,
    use_fallback: bool | KernelizeFallback = True,
    filter_fn: FilterFn | None = None,
    verify: bool | Verify | Mapping[Any, Any] = False,
    check_outputs: bool = False,
    checks: Sequence[Check] = (),
) -> nn.Module:
    """Replace, in place, the forward of every extensible module that has a kernel; return `model`.

    `mode=None` decides per call: a kernel without backward runs only while the module is not
    training and autograd is not recording, so `model.train()` / `model.eval()` and
    `torch.no_grad()` take effect without kernelizing again. A `Mode` fixes the choice once,
    like the Hugging Face `kernels` package. Each site's decision is kept: `kernel_fx.report(model)`.

    `use_fallback=True` keeps the original forward wherever no kernel fits, with the reason in the
    report; `False` raises `KernelizeError` (a `ValueError`) instead, also for a marked layer with no
    mapping, as `kernels` does; a `KernelizeFallback` allows only the cases it names (e.g.
    `KernelizeFallback.DEFAULT`: missing mappings, but not kernels that fail to load). A layer's
    `kernel_condition` and `filter_fn` skip sites; `KERNEL_FX_DISABLE` or `DISABLE_KERNEL_MAPPING`
    restores every original forward.

    By default a call a kernel serves never runs the original's Python, as in the `kernels`
    package; when the model is then compiled (any backend), each trace compares the kernel's
    outputs with the original's on fake values and keeps the original where they differ.
    `check_outputs=True` checks eager calls too: the first call of each input signature through
    a kernel compares its output's structure, shapes, dtypes and devices with the original's (run
    on fake tensors: no compute, but the original's Python runs); a kernel that fails keeps the
    original for such calls, with a warning and reason "wrong output" in the report.
    `verify=True` (or a dict of tolerances `{torch.bfloat16: (rtol, atol)}`, or a
    `kernel_fx.Verify`) implies it and also runs the original, on copies of those inputs and in
    float64 where it can, and keeps the kernel only within the tolerance (reason "numerically
    different" otherwise); the measured error is in the report. Its cost: one extra run of the
    original (in float64) per site and input signature, on the first such call only.
    `checks=[...]` adds `kernel_fx.checks.Check`s, run on those first calls and while tracing,
    in their phases, after the shared ones; their results are in the report by check name.

    >>> import torch
    >>> from kernel_fx.kernels import bundled_repo_path
    >>> from kernel_fx.demo.model import RMSNorm
    >>> from kernel_fx import LocalLayerRepository, use_kernel_mapping
    >>> repo = LocalLayerRepository(bundled_repo_path(), layer_name="RMSNorm")
    >>> model = nn.Sequential(RMSNorm(8))
    >>> with use_kernel_mapping({"RMSNorm": {"cpu": repo}}):
    ...     _ = kernelize(model, device="cpu", mode=Mode.INFERENCE, verify=True)
    >>> with torch.no_grad():
    ...     _ = model(torch.randn(2, 8))
    >>> decision = report(model).decisions[0]
    >>> decision.outcome.value, decision.measured.reference, decision.measured.within
    ('kernel', 'float64', True)
    """
    _check_arguments(model, needs_torch_compile, filter_fn)
    allowed = _allowed_fallbacks(use_fallback)
    if not isinstance(check_outputs, bool):
        raise ArgumentTypeError(f"kernelize(check_outputs={check_outputs!r}) must be True or False.")
    call_checks = _interned(CallChecks(Verify.of(verify), allowed, check_outputs, ordered(checks)))
    if mode is not None:
        check_kernelize_mode(mode)
        if needs_torch_compile:
            mode = mode | Mode.TORCH_COMPILE
    if device is None:
        device = model_device(model)
    target, index = _parse_device(device)
    planner = Planner(target, index, conditions=(Condition.static(mode),) if mode is not None else CONDITIONS,
                      compile_only=mode is None and needs_torch_compile)
    disabled = disabled_by()
    mark_hub_classes()  # so a later torch.compile(backend="hubkernels") binds their calls exactly
    with _gc_paused():  # thousands of forwards: no collection of the whole heap every few hundred
        marked, touched = _walk(model)  # one walk serves every question below
        released = release_hub_forwards(model, touched)  # never stack on forwards the `kernels` package installed
        hosts = hub_function_hosts(model, touched)
        plans = _plan_sites(_sites_in(model, marked, touched), planner, disabled, filter_fn, allowed, target, mode, needs_torch_compile)
        forwards: dict[int, ForwardPlan] = {}
        backend = planner.backend
        sites = []
        for path, module, site in plans:
            previous = vars(module).get("forward")
            if (site.runs_kernel and previous is not None and getattr(previous, INSTALLED_ATTR, False)
                    and previous.checks is call_checks and previous.backend == backend
                    and previous.table == _forward_plan(site, forwards).table):
                sites.append((path, site.decisions))  # a repeated kernelize: the same forward is already there
            else:
                sites.append(_install(path, module, site, backend, hosts.get(id(module)) if hosts else None, call_checks, forwards))
    setattr(model, SITES_ATTR, sites)
    setattr(model, NOTES_ATTR, released)
    return model


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _plan_sites(sites: list[tuple[str, nn.Module]], planner: Planner, disabled: str | None, filter_fn: FilterFn | None,
                allowed: KernelizeFallback | None, target: Device, mode: Mode | None,
                needs_torch_compile: bool) -> list[tuple[str, nn.Module, SitePlan]]:
    plans = []
    always_kernel: dict[str, str] = {}  # sites whose kernel runs whatever the call: path -> layer name
    for path, module in sites:
        layer_name = module.kernel_layer_name  # a str: _sites_in yields marked modules only
        if disabled:
            site = planner.skipped(module, layer_name, Rejected(DISABLED.reason, f"{disabled} is set"))
        elif filter_fn is not None and not filter_fn(module, path):
            site = planner.skipped(module, layer_name, FILTERED)
        else:
            site = planner.site(module, layer_name)
            site = _enclosed(planner, module, layer_name, site, path, always_kernel)
        if allowed is not None:
            _raise_on_fallback(path, layer_name, target, mode, site.plans, needs_torch_compile, allowed)
        plans.append((path, module, site))
    return plans


_CHECKS: dict[CallChecks, CallChecks] = {}


def _interned(checks: CallChecks) -> CallChecks:
    """One object per distinct setting: a repeated kernelize finds its forwards by identity."""
    return _CHECKS.setdefault(checks, checks)


def _walk(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module]]]:
    """The marked modules of `model` and those the `kernels` package touched (a forward it
    installed, function modules it keeps), as (path, module), in `named_modules()` order and
    with its de-duplication, in one walk."""
    marked, touched = [], []
    seen: set[nn.Module] = set()  # by identity: nn.Module hashes by id
    stack: list[tuple[str, nn.Module]] = [("", model)]
    pop, push = stack.pop, stack.append
    while stack:
        path, module = pop()
        if module in seen:
            continue
        seen.add(module)
        own = module.__dict__
        if type(getattr(module, LAYER_NAME_ATTR, None)) is str:
            marked.append((path, module))
        if HUB_REPO_ATTR in own or HUB_FUNCS_ATTR in own:
            touched.append((path, module))
        children = own["_modules"]
        if children:
            prefix = path + "." if path else ""
            for name, child in reversed(children.items()):
                if child is not None:
                    push((prefix + name, child))
    return marked, touched


def _sites_in(model: nn.Module, marked: list[tuple[str, nn.Module]], touched: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """The sites: the marked modules, and where `kernels` keeps per-instance function modules
    (which `named_modules()` does not list) every site in walk order (a second walk, then)."""
    if any(HUB_FUNCS_ATTR in vars(m) for _p, m in touched):
        return list(extensible_modules(model))
    return marked


def unkernelize(model: nn.Module) -> nn.Module:
    """Give every module of `model` its original forward back; return `model`."""
    for module in model.modules():
        forward = installed_forward(module)
        if forward is not None:
            forward.uninstall()
    for attr in (SITES_ATTR, NOTES_ATTR):
        vars(model).pop(attr, None)
    return model


def report(model: nn.Module) -> Report:
    """The decisions of the last `kernelize(model)`, one per site and condition."""
    sites = vars(model).get(SITES_ATTR)
    if sites is None:
        raise KernelFxError(f"{type(model).__name__} has not been kernelized; call kernel_fx.kernelize(model) first.")
    modules = dict(extensible_modules(model))
    on_dtensors = dtensor_fallbacks(model)  # kernels that kept the original on DTensor inputs, by path
    decisions = []
    for path, planned in sites:
        forward = installed_forward(modules[path]) if path in modules else None
        findings = forward.findings if forward is not None else []
        for d in with_findings(planned, findings):
            if path in on_dtensors and d.outcome is not Outcome.ORIGINAL:
                d = replace(d, outcome=Outcome.ORIGINAL, rejected=on_dtensors[path])
            decisions.append(replace(d, path=path))
    return Report(decisions, notes=list(vars(model).get(NOTES_ATTR, ())))


def with_findings(decisions: tuple[Decision, ...], findings: list[Finding]) -> list[Decision]:
    """A site's planned decisions with what the checks of its calls found: per checked input
    signature, the kernel's decision with its measured error, or the original with the reason."""
    if not findings:
        return list(decisions)
    kernels = [d for d in decisions if d.outcome is not Outcome.ORIGINAL]
    result = []
    for d in decisions:
        mine = [f for f in findings if d in kernels and (len(kernels) == 1 or _covers(d, Condition(f.grad, f.compiling)))]
        result += [d] if not mine else [
            replace(d, outcome=Outcome.ORIGINAL if f.rejected else d.outcome, rejected=f.rejected, measured=f.measured,
                    figures=f.figures)
            for f in mine
        ]
    return result


def _covers(decision: Decision, condition: Condition) -> bool:
    return decision.mode == "any" or str(condition.mode) in decision.mode.split(", ")


def _enclosed(planner: Planner, module: nn.Module, layer_name: str, site: SitePlan, path: str,
              always_kernel: dict[str, str]) -> SitePlan:
    """A site inside one whose kernel always runs: the enclosing kernel replaces the whole call, so
    this site's own kernel is not installed (the compiled pass reports it the same way). A site
    that would keep its original anyway keeps its own reason."""
    if "." not in path and "" not in always_kernel:  # a child of the root: nothing encloses it
        if site.always_kernel and path:
            always_kernel[path] = layer_name
        return site
    outer = _enclosing(path, always_kernel)
    if outer is not None and site.runs_kernel:
        detail = f"inside {outer or '<root>'} ({always_kernel[outer]}), which runs a kernel"
        return planner.skipped(module, layer_name, Rejected(Reason.ENCLOSED, detail))
    if outer is None and site.always_kernel:
        always_kernel[path] = layer_name
    return site


def _enclosing(path: str, always_kernel: dict[str, str]) -> str | None:
    """The outermost path of `always_kernel` that encloses `path`: its ancestors looked up one by
    one (the root "" first), so kernelize stays linear in the number of sites."""
    if not path:
        return None
    if "" in always_kernel:
        return ""
    parts = path.split(".")
    return next((p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p in always_kernel), None)


def _check_arguments(model: object, needs_torch_compile: object, filter_fn: object) -> None:
    """kernelize's arguments, checked before anything changes (a string "False" is not False)."""
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"kernelize(model={model!r}) needs a torch.nn.Module, got a {type(model).__name__}.")
    if not isinstance(needs_torch_compile, bool):
        raise MappingError(f"kernelize(needs_torch_compile={needs_torch_compile!r}) must be True or False.")
    if filter_fn is not None and not callable(filter_fn):
        raise ArgumentTypeError(
            f"kernelize(filter_fn={filter_fn!r}) must be None or a function (module, path) -> bool, got a {type(filter_fn).__name__}."
        )


def _parse_device(device: object) -> tuple[Device, int | None]:
    """The mapping device and index of kernelize's `device=` ("cuda", "cuda:1", a torch.device)."""
    target = Device.parse(device)  # type: ignore[arg-type]
    try:
        index = device_index(device)  # type: ignore[arg-type]
    except ValueError:
        raise MappingError(
            f"kernelize(device={device!r}): the index after ':' must be a number; use e.g. '{target.type}', "
            f"'{target.type}:0' or a torch.device."
        ) from None
    if index is not None and index < 0:
        raise MappingError(f"kernelize(device={device!r}): the device index must be 0 or more.")
    return target, index


def _allowed_fallbacks(use_fallback: object) -> KernelizeFallback | None:
    """None when every fallback is fine (`True`), else the fallbacks that are (`False`: none)."""
    if isinstance(use_fallback, bool):
        return None if use_fallback else KernelizeFallback.NONE
    if isinstance(use_fallback, KernelizeFallback):
        return None if use_fallback == KernelizeFallback.ALL else use_fallback
    raise MappingError(f"use_fallback={use_fallback!r} must be True, False or a kernel_fx.KernelizeFallback flag such as KernelizeFallback.DEFAULT.")


def _raise_on_fallback(path: str, layer_name: str, device: Device, mode: Mode | None,
                       plans: dict[Condition, KernelPlan], needs_compile: bool, allowed: KernelizeFallback) -> None:
    for condition, plan in plans.items():
        if mode is None and condition.compiling != needs_compile:
            continue  # conditions the caller did not ask for do not count as fallbacks
        phrase = kernels_phrase(plan.rejected, layer_name, repository_label(plan.repository) if plan.repository else None) if plan.rejected else ""
        raise_unless_allowed(plan.rejected, f"{path or '<root>'} (layer {layer_name!r}) on device {device} in mode {condition.mode!s}",
                             "Pass use_fallback=True to keep the original forward.", allowed, phrase)


# -- installing -------------------------------------------------------------------------------


def _forward_plan(site: SitePlan, forwards: dict[int, ForwardPlan]) -> ForwardPlan:
    """One ForwardPlan per SitePlan: sites planned alike share their table."""
    plan = forwards.get(id(site))
    if plan is None:
        plan = forwards[id(site)] = plan_forward(site.original, {c: (p.kernel, p.repository) for c, p in site.plans.items()})
    return plan


def _install(path: str, module: nn.Module, site: SitePlan, backend: str, host: nn.Module | None,
             checks: CallChecks, forwards: dict[int, ForwardPlan]) -> tuple[str, tuple[Decision, ...]]:
    plan = _forward_plan(site, forwards) if site.runs_kernel else None
    previous = vars(module).get("forward")
    if previous is not None and getattr(previous, INSTALLED_ATTR, False):
        if (plan is not None and previous.table == plan.table and previous.backend == backend
                and (previous.checks is checks or previous.checks == checks)):
            return path, site.decisions  # a repeated kernelize: the same forward is already there
        previous.uninstall()  # kernelize is idempotent: always start from the original forward
    if plan is not None:
        forward = make_forward(module, plan, backend, checks)
        forward.owner = host if host is not None else module
        forward.install()
    return path, site.decisions
