"""The forward kernelize installs on a module instance, and how it chooses per call.

A `KernelForward` holds a table of four forwards, one per condition (autograd needed or not,
compiling or not), and picks one per call; a static choice skips the checks. A kernel's entry is
guarded for DTensor inputs (`kernel_fx.dtensor.guard`): it runs as the kernel declares, or the
original runs. It lives in the
instance `__dict__`, so the class and every other instance stay untouched, and it survives
`copy.deepcopy` and pickling (kernels are reloaded from their repositories, loudly falling back
to the original forward when they cannot be).

Checks (`kernel_fx.call_checks`): while dynamo traces a call, the kernel's outputs are compared
with the original's on fake values, once per trace, and the traced code takes the original when
they differ (any backend). Eager calls run the kernel with no per-call work, and never the
original's Python, unless kernelize was given `check_outputs=True`, `verify=True` or `checks=[...]`:
then the first call of each input signature (shapes, dtypes, devices, plain values) runs the
pipeline, and a kernel that fails keeps the original for that signature, with a warning and a
`Finding` the report shows (or `KernelizeError` under `use_fallback=False`). Later calls of a
checked signature cost one signature look-up.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..checks.calls import CallChecks, Finding, check_eager_call, check_while_tracing
from ..checks.verification import call_signature, describe, in_reference_run
from ..decisions import raise_unless_allowed
from ..dtensor import guard
from ..errors import KernelFallbackWarning
from ..layers import MARKED_ATTR
from ..originals import ForwardFn, as_method, previous_forward

# Bound once: these run on every call of an installed forward (dynamo knows them by identity).
_grad_enabled = torch.is_grad_enabled


def _is_compiling() -> bool:
    """`torch.compiler.is_compiling()` for half its cost: dynamo evaluates this at trace time as a
    constant (`assume_constant_result`), True there; eagerly it reads the flag torch sets while it
    compiles or exports (no `torch.jit.is_scripting()` call: installed forwards are never scripted)."""
    return torch.compiler._is_compiling_flag


_is_compiling._dynamo_marked_constant = True  # type: ignore[attr-defined]  # = torch._dynamo.assume_constant_result
# A DTensor lives on a device mesh, which needs a process group: while none is initialized no
# argument or parameter can be one, and the kernel runs with no DTensor look-up (one attribute read).
_WORLD = torch.distributed.distributed_c10d._world if torch.distributed.is_available() else None


@dataclass(frozen=True)
class ForwardPlan:
    """What a site's installed forward runs per condition; shared by every site planned alike."""

    cls: type[KernelForward]
    table: tuple
    repos: tuple


def plan_forward(original: ForwardFn, by_condition: dict) -> ForwardPlan:
    """The `ForwardPlan` from `{Condition: (kernel class or None, repository)}`."""
    if len(by_condition) == 1:  # a fixed mode: the same choice whatever the call
        (kernel, repo), = by_condition.values()
        entries = [(kernel, repo)] * 4
    else:
        entries = [by_condition[c] for c in sorted(by_condition, key=lambda c: c.index)]
    table = tuple(original if k is None else guard(k, original) for k, _ in entries)
    repos = tuple(None if k is None else r for k, r in entries)
    return ForwardPlan(_forward_class(table), table, repos)


def make_forward(module: nn.Module, plan: ForwardPlan, backend: str, checks: CallChecks | None = None) -> KernelForward:
    """The forward to install on `module` (whose own previous forward, if any, the plan wraps)."""
    return plan.cls(module, plan.table, plan.repos, backend, previous_forward(module), checks or CallChecks())


def _forward_class(table: tuple) -> type[KernelForward]:
    grad_matters = table[0] is not table[1] or table[2] is not table[3]
    compile_matters = table[0] is not table[2] or table[1] is not table[3]
    if not grad_matters and not compile_matters:
        return StaticForward
    if not grad_matters:
        return CompileCheckingForward
    return DynamicForward


class KernelForward:
    """Base of the installed forwards; subclasses differ only in how much they check per call."""

    kernel_fx_installed = True  # how every path recognizes an installed forward (see `originals`)

    def __init__(self, module: nn.Module, table: tuple, repos: tuple, backend: str, previous: Any,
                 checks: CallChecks | None = None) -> None:
        self.module = module
        self.table = table
        self.repos = repos
        self.backend = backend
        self.previous = previous
        self.checks = checks or CallChecks()
        self.original = as_method(previous, module)
        self.checked = self.checks.on_eager_calls  # else eager calls run the kernel with no per-call work
        # Per table entry, the kernel class an unchecked eager call may run directly (no DTensor
        # guard while no process group exists), else None: the entry goes through `run`.
        self.fast = tuple(_Runs(_unmarked(fn)) if repo is None else None if self.checked else getattr(fn, "kernel_class", None)
                          for fn, repo in zip(table, repos))
        self.findings: list[Finding] = []
        self._verdicts: dict[tuple, bool] = {}  # (table index, call signature) -> the kernel passed its checks
        self.fn = table[0]
        # whose `training` flag decides: the module's own, or (for `kernels`' per-instance function
        # modules, which `model.eval()` never reaches) the host module's
        self.owner = module

    @property
    def __func__(self) -> Callable[..., Any]:
        """`kernels`' function modules route calls through `module.forward.__func__(caller, ...)`,
        where the caller is the shared global function module: run this instance's choice. (A
        property, not a closure kept on the instance: no reference cycle per installed forward.)"""
        return self._as_function

    def _as_function(self, _caller: Any, *args: Any, **kwargs: Any) -> Any:
        return self(*args, **kwargs)

    def record(self, finding: Finding) -> None:
        """Keep what the checks of one call found (the report reads `findings`)."""
        self.findings.append(finding)

    def run(self, index: int, args: tuple, kwargs: dict, compiling: bool) -> Any:
        """Run the forward of condition `index`, checked where checks are asked for: while dynamo
        traces, always (once per trace, on fakes); eagerly, the first call of each input signature
        when kernelize was given check_outputs, verify or checks."""
        fn = self.table[index]
        if self.repos[index] is None:
            return fn(self.module, *args, **kwargs)
        if compiling:
            if check_while_tracing(self, index, args, kwargs, self.module):
                return fn(self.module, *args, **kwargs)
            return self.original(self.module, *args, **kwargs)
        if not self.checked:
            return fn(self.module, *args, **kwargs)
        if in_reference_run():  # the enclosing layer's original runs as a reference: no kernels inside
            return self.original(self.module, *args, **kwargs)
        key = call_signature(args, kwargs)
        if key is None:
            return fn(self.module, *args, **kwargs)
        verdict = self._verdicts.get((index, key))
        if verdict is None:
            return self._first_call(index, key, args, kwargs)
        return (fn if verdict else self.original)(self.module, *args, **kwargs)

    def _first_call(self, index: int, key: tuple, args: tuple, kwargs: dict) -> Any:
        module = self.module
        verdict, out = check_eager_call(self.checks, module, self.table[index], self.original, args, kwargs)
        self.record(Finding.of(index, describe(args, kwargs), verdict))
        self._verdicts[(index, key)] = verdict.rejected is None
        if verdict.rejected is None:
            return out
        where = f"{type(module).__name__} with the kernel from {self.repos[index]!r}"
        if self.checks.allowed is not None:
            raise_unless_allowed(verdict.rejected, where, "Pass use_fallback=True to keep the original forward.", self.checks.allowed)
        warnings.warn(f"kernel_fx: {where}: {verdict.rejected}; the original forward runs for such inputs.", KernelFallbackWarning, stacklevel=3)
        return self.original(module, *args, **kwargs)

    def install(self) -> None:
        vars(self.module)["forward"] = self

    def uninstall(self) -> None:
        if self.previous is None:
            vars(self.module).pop("forward", None)
        else:
            vars(self.module)["forward"] = self.previous

    def __deepcopy__(self, memo: dict) -> KernelForward:
        import copy

        module = copy.deepcopy(self.module, memo)
        return type(self)(module, self.table, self.repos, self.backend, copy.deepcopy(self.previous, memo), self.checks)

    def __reduce__(self) -> tuple:
        # Pickle the repositories, not the kernel functions: a fresh process reloads them.
        return (_rebuild, (self.module, self.repos, self.backend, self.previous, self.checks))

    def __repr__(self) -> str:
        return f"<kernel_fx forward of {type(self.module).__name__}: {type(self).__name__}>"


def _unmarked(fn: ForwardFn) -> ForwardFn:
    """The original behind the class's call-boundary wrapper: in eager the wrapper only asks whether
    dynamo traces, and the fast path runs only when it does not."""
    return fn.__wrapped__ if getattr(fn, MARKED_ATTR, False) else fn


class _Runs:
    """A table entry that runs the original, shaped like a kernel class (`.forward(module, ...)`)."""

    __slots__ = ("forward",)

    def __init__(self, fn: ForwardFn) -> None:
        self.forward = fn


class StaticForward(KernelForward):
    """The same forward under every condition: no checks per call."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kernel = self.fast[0]
        if _is_compiling():
            return self.run(0, args, kwargs, True)
        if kernel is not None and (_WORLD is None or _WORLD.default_pg is None):  # the hot path: ~0.3 µs over the kernel
            return kernel.forward(self.module, *args, **kwargs)
        return self.run(0, args, kwargs, False)


class CompileCheckingForward(KernelForward):
    """A kernel that must not run while torch.compile traces (can_torch_compile = False)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _is_compiling():
            return self.run(2, args, kwargs, True)
        kernel = self.fast[0]
        if kernel is not None and (_WORLD is None or _WORLD.default_pg is None):
            return kernel.forward(self.module, *args, **kwargs)
        return self.run(0, args, kwargs, False)


class DynamicForward(KernelForward):
    """Chooses per call by whether autograd needs this call's backward, and whether compiling."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        grad = self.owner.training or (_grad_enabled() and needs_grad(self.module, args, kwargs))
        if _is_compiling():
            return self.run(grad + 2, args, kwargs, True)
        kernel = self.fast[grad]
        if kernel is not None and (_WORLD is None or _WORLD.default_pg is None):
            return kernel.forward(self.module, *args, **kwargs)
        return self.run(grad, args, kwargs, False)


def needs_grad(module: nn.Module, args: tuple, kwargs: dict) -> bool:
    """Whether autograd records through a call of `module` with these arguments."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            if value.requires_grad:
                return True
        elif isinstance(value, (tuple, list)):
            if any(isinstance(v, torch.Tensor) and v.requires_grad for v in value):
                return True
    return any(p.requires_grad for p in module.parameters())


def _rebuild(module: nn.Module, repos: tuple, backend: str, previous: Any, checks: CallChecks | None = None) -> KernelForward:
    from ..repos import load_layer

    original = as_method(previous, module)
    table = []
    for repo in repos:
        if repo is None:
            table.append(original)
            continue
        try:
            table.append(guard(load_layer(repo, backend), original))
        except Exception as exc:  # noqa: BLE001 - any failure must be loud, never a silent revert
            warnings.warn(
                f"kernel_fx: reloading kernel {repo!r} for a {type(module).__name__} failed ({exc}); "
                "this module now runs its ORIGINAL forward. Call kernel_fx.kernelize(model) again to retry.",
                RuntimeWarning,
                stacklevel=2,
            )
            table.append(original)
    table_t = tuple(table)
    return _forward_class(table_t)(module, table_t, repos, backend, previous, checks)
