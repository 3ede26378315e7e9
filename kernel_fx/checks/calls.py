"""The check pipeline on calls of a kernelized module: the eager first call of each input signature,
and the trace of a call when dynamo compiles a model `kernelize` changed (any backend).

Eagerly (`EagerCall`), only where asked — `kernelize(..., check_outputs=True)`, `verify=True` or
`checks=[...]` — because comparing with the original runs the original's Python (on fake tensors,
or on copies under verify), and by default the original never runs on a call its kernel serves, as
in the Hugging Face `kernels` package. The kernel serves the checked call; a rejection sets it
aside for later calls of that signature (and serves this one with the original).

While dynamo traces (`TracedCall`), always: the trace sees fake values, so the checks run once per
trace at compile time, on fakes (the kernel's and the original's outputs compared without
computing anything), and the traced code takes the kernel or the original by the verdict — so a
wrong kernel stays out of the graph with the "eager" and "aot_eager" backends as with hubkernels.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..decisions import KernelizeFallback, Measured, Rejected
from .numbers import numerically_different
from .outputs import wrong_output
from .pipeline import Check, Phase, Verdict, ordered, run_checks
from .subject import CheckSettings
from .verification import Verify, describe, expected_output, fake_output, measure, reference_output

ForwardFn = Callable[..., Any]


@dataclass(frozen=True)
class CallChecks:
    """What a kernelized module checks on its calls.

    Attributes:
        verify: verify=True's settings, or None.
        allowed: kernelize's `use_fallback` as fallbacks allowed (None: all; else a rejection raises).
        outputs: compare output metadata with the original's on eager calls (`check_outputs=True`);
            always done while dynamo traces.
        extra: the user's checks (`kernelize(..., checks=[...])`), run with the shared ones.
    """

    verify: Verify | None = None
    allowed: KernelizeFallback | None = None
    outputs: bool = False
    extra: tuple[Check, ...] = ()

    @property
    def checks(self) -> tuple[Check, ...]:
        return ordered((wrong_output, numerically_different, *self.extra))  # SHARED_CHECKS, then the user's

    @property
    def on_eager_calls(self) -> bool:
        """Whether eager calls are checked at all (else they cost nothing per call)."""
        return self.outputs or self.verify is not None or bool(self.extra)


@dataclass(frozen=True)
class Finding:
    """What the checks of one input signature found at a site.

    Attributes:
        index: the condition's table index (see `forwards.Condition.index`).
        inputs: the call's tensor arguments, `float32[2, 8]` (symbolic sizes while tracing).
        rejected: why the kernel was set aside for such calls, or None.
        measured: verify's measured error, or None.
        figures: `(check name, figures)` of every check that measured something.
        path_kind: "eager", or "kernelized" for a check made while dynamo traced.
    """

    index: int
    inputs: str
    rejected: Rejected | None
    measured: Measured | None = None
    figures: tuple[tuple[str, Any], ...] = ()
    path_kind: str = "eager"

    @classmethod
    def of(cls, index: int, inputs: str, verdict: Verdict, path_kind: str = "eager") -> Finding:
        measured = next((f for _n, f in verdict.figures if isinstance(f, Measured)), None)
        return cls(index, inputs, verdict.rejected, measured, verdict.figures, path_kind)

    @property
    def grad(self) -> bool:
        return bool(self.index % 2)

    @property
    def compiling(self) -> bool:
        return self.index >= 2


class _Call:
    """What both subjects share: the site, its kernel and the settings."""

    path_kind = "eager"

    def __init__(self, module: nn.Module, kernel_fn: ForwardFn, original: ForwardFn, args: tuple, kwargs: dict,
                 settings: CheckSettings) -> None:
        self._module, self.kernel_fn, self.original = module, kernel_fn, original
        self.args, self.kwargs, self.settings = args, kwargs, settings
        self.layer_name = getattr(module, "kernel_layer_name", None) or type(module).__name__
        self.inputs = describe(args, kwargs)

    @property
    def module(self) -> nn.Module:
        return self._module

    @property
    def kernel(self) -> type | None:
        return getattr(self.kernel_fn, "kernel_class", None)


class EagerCall(_Call):
    """The first eager call of an input signature through a kernel (a `kernel_fx.checks.Subject`):
    the original's output metadata and reference are taken before the kernel runs (it may write
    its inputs), and only when a check will ask for them."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.out: Any = None
        self._expected: Any = None
        self._reference: tuple[Any, str] | None = None

    def before_kernel(self) -> None:
        if self.settings.outputs:
            self._expected = expected_output(self.original, self.module, self.args, self.kwargs)
        if self.settings.verify is not None and (self._expected is not None or not self.settings.outputs):
            self._reference = reference_output(self.original, self.module, self.args, self.kwargs, self.settings.verify)

    def expected(self) -> Any:
        return self._expected

    def actual(self) -> Any:
        return self.out

    def measure(self) -> Measured | None:
        if self._reference is None or self.settings.verify is None:
            return None
        return measure(self.out, self._reference[0], self.settings.verify, self.inputs, self._reference[1])


def check_eager_call(checks: CallChecks, module: nn.Module, kernel_fn: ForwardFn, original: ForwardFn,
                     args: tuple, kwargs: dict) -> tuple[Verdict, Any]:
    """Run the pipeline on one eager call; returns the verdict and the kernel's output (None when a
    PLAN check refused the kernel before it ran)."""
    subject = EagerCall(module, kernel_fn, original, args, kwargs, CheckSettings(checks.outputs or checks.verify is not None, checks.verify))
    pipeline = checks.checks
    planned = run_checks(pipeline, subject, "eager", phases=(Phase.PLAN,))
    if planned.rejected is not None:
        return planned, None
    subject.before_kernel()
    subject.out = kernel_fn(module, *args, **kwargs)
    return planned.merged(run_checks(pipeline, subject, "eager", phases=(Phase.PREPARE, Phase.SUBSTITUTION))), subject.out


# -- while dynamo traces -----------------------------------------------------------------------------


class TracedCall(_Call):
    """A call of a kernelized module while dynamo traces it: fake values; the kernel's and the
    original's outputs computed on fake copies (the module's tensors made fake too), nothing real."""

    path_kind = "kernelized"

    def expected(self) -> Any:
        return self._on_fakes(self.original)

    def actual(self) -> Any:
        return self._on_fakes(self.kernel_fn)

    def _on_fakes(self, fn: ForwardFn) -> Any:
        try:
            return fake_output(_unmarked(fn), self.module, self.args, self.kwargs)
        except Exception:  # noqa: BLE001 - cannot run on these fakes (an object built inside the trace): unknown
            return None


def _unmarked(fn: ForwardFn) -> ForwardFn:
    """The function behind a marked forward or a DTensor guard (`functools.wraps`): on fakes at
    trace time, neither the call-boundary markers nor the guard have anything to do."""
    return getattr(fn, "__wrapped__", fn)

    def measure(self) -> Measured | None:
        return None  # numbers need real values: verify measures eager calls


class _Verdicts:
    """Verdicts made at trace time, as attributes `v<slot>`: dynamo reads a new attribute afresh."""


VERDICTS = _Verdicts()
_slots = itertools.count(1)


def next_slot() -> int:
    """A fresh slot number, evaluated by dynamo at trace time as a constant."""
    return next(_slots)


next_slot._dynamo_marked_constant = True  # type: ignore[attr-defined]  # = torch._dynamo.assume_constant_result


# Who a trace-time check reports to, by key, for calls whose owner is not a live object of the
# trace (a call decided while dynamo traced it: its plan id). Filled by `compile/trace_time.py`.
OWNERS: dict[int, Any] = {}


def check_while_tracing(forward: Any, index: int, args: tuple, kwargs: dict, module: Any) -> bool:
    """Called from traced code: run the checks on this call's fake values once, at trace time
    (`comptime`, which reads this frame's locals), and return whether the kernel may be traced in.
    `forward` owns the checks (an installed `KernelForward`, or a key of `OWNERS`): it gives the
    table of forwards, the original, the checks and `record(finding)`. Outside a trace: True."""
    slot = next_slot()
    torch._dynamo.comptime.comptime(_at_trace_time)
    return getattr(VERDICTS, f"v{slot}", True)


def _at_trace_time(ctx: Any) -> None:
    """Runs while dynamo traces `check_while_tracing`, on its locals (no free variables allowed)."""
    slot = ctx.get_local("slot").as_python_constant()
    index = ctx.get_local("index").as_python_constant()
    owner_var = ctx.get_local("forward")
    owner = OWNERS.get(owner_var.as_python_constant()) if owner_var.is_python_constant() else _real(owner_var)
    try:
        module = _real(ctx.get_local("module"))
        args = _python_value(ctx.get_local("args"))
        kwargs = _python_value(ctx.get_local("kwargs"))
    except Exception:  # noqa: BLE001 - values the checks cannot see: trace the kernel, as without checks
        owner = None
    if owner is None:
        setattr(VERDICTS, f"v{slot}", True)
        return
    subject = TracedCall(module, owner.table[index], owner.original, tuple(args), dict(kwargs),
                         CheckSettings(outputs=True, verify=None))
    subject.path_kind = "trace-time" if owner_var.is_python_constant() else "kernelized"
    verdict = run_checks(owner.checks.checks, subject, subject.path_kind)
    owner.record(Finding.of(index, subject.inputs, verdict, subject.path_kind))
    setattr(VERDICTS, f"v{slot}", verdict.rejected is None)


def _real(var: Any) -> Any:
    """The real object behind a comptime variable of an object dynamo holds (a module, a forward)."""
    return var._i_will_not_complain_if_bc_breaks_VariableTracker().value


def _python_value(var: Any) -> Any:
    """A traced value (dynamo's VariableTracker behind a comptime variable) as a Python value:
    tensors as their fake example values, containers element by element, constants as themselves."""
    vt = var._i_will_not_complain_if_bc_breaks_VariableTracker()  # no public way to read a tuple's fakes
    return _vt_value(vt)


def _vt_value(vt: Any) -> Any:
    from torch._dynamo.variables import ConstDictVariable, TensorVariable
    from torch._dynamo.variables.lists import BaseListVariable

    if isinstance(vt, TensorVariable):
        return vt.as_proxy().node.meta["example_value"]
    if isinstance(vt, BaseListVariable):
        items = [_vt_value(v) for v in vt.items]
        return items if vt.python_type() is list else tuple(items)
    if isinstance(vt, ConstDictVariable):
        return {k.vt.as_python_constant(): _vt_value(v) for k, v in vt.items.items()}
    if vt.is_python_constant():
        return vt.as_python_constant()
    value = getattr(vt, "value", None)
    if value is not None and not isinstance(value, (torch.Tensor, nn.Module)):
        # Any other object (a KV cache, ...) may be written by the forward: the checks run both
        # forwards on copies of it, and its tensors (real) stay out of the fake computation's way.
        return copy.deepcopy(value)
    raise ValueError(f"a {type(vt).__name__} argument the checks cannot copy")
