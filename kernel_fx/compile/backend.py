"""`hubkernels`: the torch.compile backend that puts Hub kernels into the graphs dynamo traces.

    compiled = torch.compile(model, backend="hubkernels", options={"inner": "inductor"})

For every graph dynamo hands over, the graph pass (`graph_pass.py`) finds the calls of extensible
modules (`sites`), decides each with the planner every path shares and a list of per-site checks
(`decide`, `checks`), puts the kernels in where the call binds exactly (`apply`), then this
backend hands the graph to the inner compiler. What it did is kept as a `kernel_fx.Report` with
one `GraphRecord` per graph.

Options (`torch.compile(..., options={...})` or `HubKernelsBackend(...)`):
    inner         inner compiler: "inductor" (default), "eager", "aot_eager", any registered
                  backend name, or a callable `(gm, example_inputs) -> callable`
    mode          kernel_fx.Mode (or its name) to resolve kernels in; default: per call site,
                  TRAINING where autograd records through the call, else INFERENCE
    device        device type to resolve kernels for; default: the site's tensors' device
    use_fallback  False: raise instead of keeping an original forward (as kernelize)
    autotune      True: compile and time the whole graph with every kernel, with none, and
                  without each layer name's kernels (as the compile budget allows: at most 3x
                  the default's compile), on the real example inputs, and keep a layer name's
                  kernels only where the graph is faster with them (see autotune.py)
    verify        True (or a dict of tolerances {dtype: (rtol, atol)}, or a kernel_fx.Verify): run
                  each distinct call's kernel against the original forward (float64 where it
                  runs so) on the real example inputs and keep it only within the tolerance;
                  the measured error goes in the report (see verify.py; costs one eager run of
                  the graph, and one kernel and one original run per distinct call)
    checks        kernel_fx.checks.Check objects run with the pass's own, in their phases, on
                  every site (trace-time ones too); a rejection keeps the original, with its reason
torch.compile's own `mode=` ("max-autotune", ...) goes to inductor.

A layer and a kernel for it (the bundled CPU SiluAndMul), and the graph before and after:

>>> import torch
>>> from torch import nn
>>> import kernel_fx
>>> from kernel_fx.kernels import bundled_repo_path
>>> @kernel_fx.use_kernel_forward_from_hub("SiluAndMul")
... class SiluAndMul(nn.Module):
...     def forward(self, x):
...         d = x.shape[-1] // 2
...         return torch.nn.functional.silu(x[..., :d]) * x[..., d:]
>>> repo = kernel_fx.LocalLayerRepository(bundled_repo_path(), layer_name="SiluAndMul")
>>> backend = HubKernelsBackend(inner="eager")
>>> with kernel_fx.use_kernel_mapping({"SiluAndMul": {"cpu": repo}}), torch.no_grad():
...     out = torch.compile(nn.Sequential(SiluAndMul()).eval(), backend=backend)(torch.randn(2, 8))
>>> backend.report.summary()
'1 site: 1 kernel, 0 original'
>>> print(backend.records[0].before.code)
def forward(self, L_args_0_ : torch.Tensor):
    l_args_0_ = L_args_0_
    getitem_1 = l_args_0_[(Ellipsis, slice(None, 4, None))]
    silu = torch.nn.functional.silu(getitem_1);  getitem_1 = None
    getitem_2 = l_args_0_[(Ellipsis, slice(4, None, None))];  l_args_0_ = None
    out = silu * getitem_2;  silu = getitem_2 = None
    return (out,)
>>> print(backend.records[0].after.code)  # the kernel's forward, traced in: x.chunk -> split
def forward(self, L_args_0_ : torch.Tensor):
    l_args_0_ = L_args_0_
    split = torch.ops.aten.split.Tensor(l_args_0_, 4, -1);  l_args_0_ = None
    getitem_4 = split[0]
    getitem_5 = split[1];  split = None
    silu_1 = torch.ops.aten.silu.default(getitem_4);  getitem_4 = None
    mul_1 = torch.ops.aten.mul.Tensor(silu_1, getitem_5);  silu_1 = getitem_5 = None
    return (mul_1,)
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import fx

from .. import markers
from ..checks import Check
from ..graph_records import GraphRecord
from ..layers import mark_hub_classes
from ..modes import Mode
from ..report import Report
from . import trace_time  # noqa: F401 - registers the trace-time chooser with the markers
from .frame import FrameInfo, current_frame
from .graph_pass import run_pass
from .options import Options
from .served import ServedLayers

markers.allow_markers()
# torch.compile(backend="hubkernels") imports this module before dynamo traces: mark the classes the
# `kernels` package or transformers marked, so their calls are traced between markers too.
mark_hub_classes()

# -- the backend ---------------------------------------------------------------------------------


class HubKernelsBackend:
    """A hubkernels backend with its own settings, which remembers what it did to every graph.

    >>> backend = HubKernelsBackend(inner="eager")
    >>> backend.options.inner, backend.report.summary()
    ('eager', '0 sites: 0 kernel, 0 original')
    """

    _kernel_fx_hubkernels = True  # how a trace recognises this backend (see markers.py)

    def __init__(self, *, inner: str | Callable[..., Any] = "inductor", mode: Mode | str | None = None,
                 device: str | torch.device | None = None, use_fallback: bool = True, autotune: bool = False,
                 verify: Any = None, checks: Sequence[Check] = ()) -> None:
        self.options = Options(inner, mode, device, use_fallback, autotune, verify, tuple(checks))  # type: ignore[arg-type]
        mark_hub_classes()  # classes loaded since this module was imported
        self.records: list[GraphRecord] = []

    @property
    def report(self) -> Report:
        """Every decision and graph record of this backend so far."""
        return Report([d for r in self.records for d in r.decisions], list(self.records))

    @property
    def pass_seconds(self) -> float:
        return sum(r.pass_seconds for r in self.records)

    def __call__(self, gm: fx.GraphModule, example_inputs: list[Any], *, mode: str | None = None,
                 options: Mapping[str, Any] | None = None) -> Callable[..., Any]:
        opts = self.options.updated(options)
        frame = current_frame()
        record = _run(gm, example_inputs, opts, len(self.records), mode, frame)
        self.records.append(record)
        _sessions.add(record)
        compiled = _inner_compile(opts.inner, gm, example_inputs, mode)
        return ServedLayers.wrap(compiled, gm, example_inputs, record, frame, _sessions.served)

    def __repr__(self) -> str:
        return f"HubKernelsBackend({self.options}, graphs={len(self.records)})"


def hubkernels(gm: fx.GraphModule, example_inputs: list[Any], *, mode: str | None = None,
               options: Mapping[str, Any] | None = None) -> Callable[..., Any]:
    """The backend torch.compile finds by name: `torch.compile(model, backend="hubkernels")`.

    Records go to `kernel_fx.last_compile_report()`.
    """
    opts = Options().updated(options)
    frame = current_frame()
    record = _run(gm, example_inputs, opts, _sessions.next_index(), mode, frame)
    _sessions.add(record)
    compiled = _inner_compile(opts.inner, gm, example_inputs, mode)
    return ServedLayers.wrap(compiled, gm, example_inputs, record, frame, _sessions.served)


hubkernels._kernel_fx_hubkernels = True  # type: ignore[attr-defined]


def last_compile_report() -> Report | None:
    """The report of the most recent hubkernels compile in this process, or None.

    A compile is everything one torch.compile'd callable compiled (all its graphs, recompiles
    included) until another compiled callable compiles with hubkernels.
    """
    return _sessions.report


def _run(gm: fx.GraphModule, example_inputs: list[Any], opts: Options, index: int, compile_mode: str | None,
         frame: FrameInfo) -> GraphRecord:
    """The graph pass on `gm`; `compile_mode` is torch.compile's `mode=`, for the inner compiler."""
    return run_pass(gm, example_inputs, opts, frame=frame, index=index, inner=_inner_name(opts.inner, compile_mode),
                    compile_fn=lambda g, xs: _inner_compile(opts.inner, g, xs, compile_mode))


# -- the inner compiler ----------------------------------------------------------------------------


def _inner_name(inner: str | Callable[..., Any], compile_mode: str | None) -> str:
    """The inner compiler as the report names it, with torch.compile's mode where it gets one."""
    name = inner if isinstance(inner, str) else getattr(inner, "__name__", repr(inner))
    return f"{name} (mode={compile_mode})" if compile_mode and inner == "inductor" else name


def _inner_compile(inner: str | Callable[..., Any], gm: fx.GraphModule, example_inputs: list[Any], mode: str | None) -> Callable[..., Any]:
    if callable(inner):
        return inner(gm, example_inputs)
    if inner == "inductor":
        from torch._inductor import list_mode_options
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(gm, example_inputs, config_patches=list_mode_options(mode) if mode else None)
    if inner == "eager":
        return gm.forward
    from torch._dynamo.backends.registry import lookup_backend

    return lookup_backend(inner)(gm, example_inputs)


# -- "the most recent compile" ---------------------------------------------------------------------


class _Sessions:
    """Groups graph records into compiles: the graphs one torch.compile'd callable compiled.

    The callable is found as the outermost dynamo context on the Python stack; without one, a
    record joins the current compile.
    """

    def __init__(self) -> None:
        self._context: Callable[[], Any] | None = None
        self.report: Report | None = None

    def next_index(self) -> int:
        context = _outermost_dynamo_context()
        return 0 if self.report is None or not self._same(context) else len(self.report.graphs)

    def add(self, record: GraphRecord) -> None:
        context = _outermost_dynamo_context()
        if self.report is None or not self._same(context):
            self.report = Report()
            self._context = _ref(context)
        self.report.graphs.append(record)
        self.report.decisions.extend(record.decisions)

    def served(self, record: GraphRecord, decisions: list[Any]) -> None:
        """A compiled graph ran for another layer (see served.py): its sites join the report."""
        if self.report is not None and any(r is record for r in self.report.graphs):
            self.report.decisions.extend(decisions)

    def _same(self, context: Any) -> bool:
        if context is None:
            return True
        return self._context is not None and self._context() is context


def _ref(obj: Any) -> Callable[[], Any] | None:
    if obj is None:
        return None
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


def _outermost_dynamo_context() -> Any:
    found = None
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename.endswith(("_dynamo/eval_frame.py", "_dynamo\\eval_frame.py")):
            candidate = frame.f_locals.get("self")
            if candidate is not None and type(candidate).__name__.endswith("Context"):
                found = candidate
        frame = frame.f_back
    return found


_sessions = _Sessions()
