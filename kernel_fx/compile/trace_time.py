"""Trace-time substitution: the hubkernels choice for calls that carry Python state.

An FX rewrite cannot rebind a Python object after tracing: a transformers `Cache` passed to an
attention layer is no graph value, and the tensors the original forward writes into it are updated
by dynamo outside the graph. For such a call (a marked forward with an argument that is neither a
tensor nor a constant), the marker asks `choose` while dynamo traces: it plans the call with the
same planner, mapping and backend options as the graph pass, and when a kernel wins, dynamo
traces the kernel's forward (with the real module and the real cache) instead of the original's.
The call is still bracketed by markers, so the pass finds it, reports it (`Outcome.KERNEL`, or the
original with the planner's reason) and diffs it like every other site.

Limits: the choice is per class, layer name, device type and whether autograd records — a
kernel that cannot be traced by dynamo (`can_torch_compile = False`) is refused here (no opaque op
can take the cache), and autotune does not time these calls.
"""

from __future__ import annotations

import itertools
from typing import Any

from torch import nn

from .. import markers
from ..checks.calls import OWNERS, CallChecks, Finding
from ..conditions import Condition
from ..decisions import DISABLED, Reason, Rejected
from ..devices import Device
from ..layers import module_classes
from ..planner import KernelPlan, Planner, is_disabled
from .options import KNOWN_OPTIONS, Options

_ids = itertools.count(1)
PLANS: dict[int, KernelPlan] = {}  # plan id (carried by the enter marker) -> what the choice was
FINDINGS: dict[int, Finding] = {}  # plan id -> what the checks found on its call at trace time
# One planner per traced frame and device (the mapping may change between compiles), kept on
# dynamo's OutputGraph of the trace (unhashable, so not a dict key), so it lives as long as the trace.
_PLANNERS_ATTR = "_kernel_fx_planners"


def choose(class_name: str, layer_name: str | None, device_type: str, needs_grad: bool) -> int:
    """Plan a call of the marked class `class_name` while dynamo traces it; return the plan's id.
    A plan that runs a kernel also sets the kernel's forward on `markers.TRACE_TIME_FORWARDS`."""
    options = backend_options()
    cls = _marked_class(class_name)
    plan_id = next(_ids)
    if is_disabled():
        plan = KernelPlan(None, None, DISABLED)
    elif cls is None or layer_name is None:
        plan = KernelPlan(None, None, Rejected(Reason.UNKNOWN_MODULE, f"class {class_name} is not a marked class kernel_fx knows"))
    else:
        device = Device(options.device) if options.device is not None else Device.parse(device_type)
        planner = _planner(device)
        plan = planner.plan_class(cls, layer_name, Condition(needs_grad, True, fixed=options.mode))
    PLANS[plan_id] = plan
    if plan.kernel is not None and cls is not None:
        setattr(markers.TRACE_TIME_FORWARDS, f"plan_{plan_id}", plan.kernel.forward)
        OWNERS[plan_id] = TraceTimeChecks(plan_id, plan, cls, options)
    return plan_id


class TraceTimeChecks:
    """What the checks of a call decided while dynamo traced need (see `call_checks.OWNERS`): the
    kernel's and the original's forwards, the shared checks plus the backend's, and where the
    verdict goes — a rejection replaces the plan, so the pass reports the original with the reason."""

    def __init__(self, plan_id: int, plan: KernelPlan, cls: type[nn.Module], options: Options) -> None:
        assert plan.kernel is not None  # only plans that run a kernel are checked
        self.plan_id, self.plan = plan_id, plan
        self.table = (plan.kernel.forward,)
        self.original = cls.forward
        self.checks = CallChecks(extra=options.checks)

    def record(self, finding: Finding) -> None:
        FINDINGS[self.plan_id] = finding
        if finding.rejected is not None:
            PLANS[self.plan_id] = KernelPlan(None, self.plan.repository, finding.rejected)


def _planner(device: Device) -> Planner:
    output = _current_output()
    if output is None:
        return Planner(device, None)
    planners = vars(output).setdefault(_PLANNERS_ATTR, {})
    if device.type not in planners:
        planners[device.type] = Planner(device, None)
    return planners[device.type]


def _current_output() -> Any:
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        return InstructionTranslator.current_tx().output
    except Exception:  # noqa: BLE001 - not tracing
        return None


def backend_options() -> Options:
    """The options of the hubkernels backend dynamo is tracing for (defaults when not found)."""
    output = _current_output()
    if output is None:
        return Options()
    backend: Any = getattr(output, "compiler_fn", None)
    extra: dict[str, Any] = {}
    for layer in markers.backend_layers(backend):  # WrapBackendDebug, _TorchCompileWrapper, partials, DDPOptimizer
        if isinstance(getattr(layer, "options", None), Options):
            return layer.options.updated(extra)
        kwargs = getattr(layer, "kwargs", None)
        if isinstance(kwargs, dict) and isinstance(kwargs.get("options"), dict):
            extra = {k: v for k, v in kwargs["options"].items() if k in KNOWN_OPTIONS}
    return Options().updated(extra)


def _marked_class(name: str) -> type[nn.Module] | None:
    if name in markers.MARKED_CLASSES:
        return markers.MARKED_CLASSES[name]  # type: ignore[return-value]
    # a subclass that inherits a marked forward
    return next((cls for cls in module_classes() if markers.class_name(cls) == name), None)


markers.set_trace_time_chooser(choose)
