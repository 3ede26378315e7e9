"""Keep a kernel only where it is faster: `options={"autotune": True}`.

For each distinct substituted call — same kernel, same input shapes, strides and dtypes, same
need for a backward — two small graphs are compiled by the inner compiler and timed on real
values: the call's region as dynamo traced it, and the same region with the kernel put in exactly
as `apply` puts it in the whole graph (see `region.py`). The kernel stays when its median is at most
`MARGIN` times the original's; otherwise the site keeps its original forward with
`Reason.SLOWER_THAN_ORIGINAL`. Timings and choices go to `GraphRecord.autotune`.

Real values: dynamo hands the backend real example inputs, not the values inside the graph, so
the graph as traced runs once, eagerly (`region.run_graph`), and the values read by the calls are
kept; every timed graph runs on copies.

Timing: medians over three alternating rounds (original, kernel, original, ...), each about
`ROUND_SECONDS` long, after warm-up; CUDA events on a GPU, `time.perf_counter` on the CPU. Only
the forward where autograd does not record through the call; forward and backward where it does.

Cost, paid only with the option on: one eager run of each graph, and per distinct call two
compiles by the inner compiler (inductor: seconds each) plus about 0.1 s of timing. A graph whose
eager run fails is compiled as without the option, with `GraphRecord.autotune_note` saying why;
a call whose timing fails keeps its kernel, with a note on its result.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import fx

from .. import markers
from ..decisions import Reason, Rejected
from ..graph_records import AutotuneResult
from .prepare import Substitution, example_key, first_line, spec_key
from .region import fresh_copy, isolated, node_requires_grad, region_graph, region_inputs, region_with_kernel, rng_restored, run_graph
from .sites import Site, example_value
from .standin import InputRef

if TYPE_CHECKING:
    from .decide import Candidate

logger = logging.getLogger(__name__)

MARGIN = 0.98  # keep a kernel when kernel_ms <= MARGIN * original_ms: a tie keeps the original
ROUND_SECONDS = 0.01  # timed per candidate and round
_ROUNDS = 3
_WARMUP = 3
_MAX_REPS = 500

Compiler = Callable[[fx.GraphModule, list[Any]], Callable[..., Any]]
MEMO_KEY = "autotune"


def faster_than_original(candidate: Candidate) -> Rejected | None:
    """With `autotune=True`: the kernel's substitution is timed faster than the original region."""
    context = candidate.context
    if not context.options.autotune:
        return None
    tuner: Tuner = context.memo(MEMO_KEY, lambda: Tuner(context.gm, context.example_inputs, context.sites,
                                                        context.compile_fn, context.inner))
    sub = candidate.substitution
    assert isinstance(sub, Substitution)  # runs after the `prepares` check
    return tuner.check(sub)


class Tuner:
    """Times the substitutions of one graph against their original regions.

    `check(sub)` is None to keep the kernel, or the `Rejected` that keeps the original. Built
    before the graph is rewritten; runs the graph (once, on the first check) only then, keeping
    the values read by one call per layer class and input signature: calls alike are timed on
    the same values, so 32 identical layers keep one layer's inputs alive, not 32.
    """

    def __init__(self, gm: fx.GraphModule, example_inputs: Sequence[Any], sites: Sequence[Site],
                 compile_fn: Compiler, inner: str) -> None:
        self.gm = gm
        self.example_inputs = example_inputs
        self.compile_fn = compile_fn
        self.inner = inner
        self.results: list[AutotuneResult] = []
        self.note: str | None = None
        self._alike: dict[tuple, list[fx.Node]] = {}  # signature -> inputs of its first call
        for site in sites:
            if site.module is not None:
                outside = region_inputs(site)
                self._alike.setdefault(_signature(site, outside), outside)
        self._values: dict[fx.Node, Any] | None = None
        self._groups: dict[tuple, int] = {}

    def check(self, sub: Substitution) -> Rejected | None:
        values = self._real_values()
        if values is None:
            return None
        site = sub.site
        label = f"{site.path or '<root>'} #{site.call_index}"
        outside = region_inputs(site)
        signature = _signature(site, outside)
        key = (sub.forward, sub.how, spec_key(sub.spec), site.context.autocast, signature)
        if key in self._groups:  # timed already: same kernel, same inputs
            i = self._groups[key]
            self.results[i] = replace(self.results[i], sites=(*self.results[i].sites, label))
        else:
            self._groups[key] = len(self.results)
            alike = [values[n] for n in self._alike[signature]]  # same shapes, strides, dtypes, in order
            self.results.append(self._time(sub, outside, alike, [node_requires_grad(n) for n in outside], label))
        return self._verdict(self.results[self._groups[key]])

    def _verdict(self, result: AutotuneResult) -> Rejected | None:
        if result.kept:
            return None
        return Rejected(Reason.SLOWER_THAN_ORIGINAL,
                        f"kernel {result.kernel_ms:.3g} ms vs original {result.original_ms:.3g} ms ({self.inner})")

    def _real_values(self) -> dict[fx.Node, Any] | None:
        if self._values is None and self.note is None:
            try:
                needed = {n for outside in self._alike.values() for n in outside}
                self._values = run_graph(self.gm, self.example_inputs, needed)
            except Exception as exc:  # noqa: BLE001 - any failure: compile as without autotune, and say why
                self.note = f"not timed: running the graph on its example inputs failed ({type(exc).__name__}: {first_line(exc)})"
                logger.warning("kernel_fx autotune: %s", self.note)
        return self._values

    def _time(self, sub: Substitution, outside: list[fx.Node], values: list[Any], flags: list[bool], label: str) -> AutotuneResult:
        site = sub.site
        grad = site.needs_grad and any(flags)
        result = AutotuneResult(site.layer_name, _describe(sub, outside, values), None, None, True, (label,),
                                "forward+backward" if grad else "forward")
        if site.context.autocast:  # the small graphs would run without the autocast around the call
            return replace(result, note="not timed: the call runs under autocast")
        device = site.device or torch.device("cpu")
        try:
            with rng_restored(values):
                original = region_graph(site, outside, values)[0]
                markers.strip_markers(original.graph)
                original.graph.lint()
                original.recompile()
                kernel = region_with_kernel(sub, outside, values)
                runs = [_compiled_run(gm, self.compile_fn, values, flags, grad) for gm in (original, kernel)]
                original_ms, kernel_ms = _race(runs, device)
        except Exception as exc:  # noqa: BLE001 - keep the kernel, as without autotune, and say why
            logger.warning("kernel_fx autotune: timing %s failed: %s", label, exc)
            return replace(result, note=f"not timed ({type(exc).__name__}: {first_line(exc)})")
        kept = kernel_ms <= MARGIN * original_ms
        logger.info("kernel_fx autotune %s (%s): kernel %.4f ms, original %.4f ms -> %s",
                    label, result.shapes, kernel_ms, original_ms, "kernel" if kept else "original")
        return replace(result, kernel_ms=kernel_ms, original_ms=original_ms, kept=kept)


# -- timing ---------------------------------------------------------------------------------------


def _compiled_run(gm: fx.GraphModule, compile_fn: Compiler, values: list[Any], flags: list[bool], grad: bool) -> Callable[[], None]:
    """`gm` compiled by the inner compiler on copies of `values`, warmed up (lazy backward
    compiles included), as a function that runs it once: forward, or forward and backward."""
    args = [fresh_copy(v, grad and flag) for v, flag in zip(values, flags)]
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]

    def forward() -> None:
        with torch.no_grad():
            fn(*args)

    def forward_backward() -> None:
        with torch.enable_grad():
            for leaf in leaves:
                leaf.grad = None
            outs = [o for o in fn(*args) if isinstance(o, torch.Tensor) and o.requires_grad]
            torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    run = forward_backward if grad else forward
    with isolated(), (torch.enable_grad() if grad else torch.no_grad()):
        fn = compile_fn(gm, list(args))
        for _ in range(_WARMUP):
            run()
    return run


def _race(runs: list[Callable[[], None]], device: torch.device) -> list[float]:
    """Median milliseconds of each run, over rounds that alternate between them."""
    once = [_samples(run, 1, device)[0] for run in runs]
    reps = [max(3, min(_MAX_REPS, int(ROUND_SECONDS / max(seconds, 1e-7)))) for seconds in once]
    samples: list[list[float]] = [[] for _ in runs]
    for _ in range(_ROUNDS):
        for run, n, found in zip(runs, reps, samples):
            found.extend(_samples(run, n, device))
    return [statistics.median(found) * 1e3 for found in samples]


def _samples(run: Callable[[], None], n: int, device: torch.device) -> list[float]:
    """Seconds of each of `n` runs."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for start, end in events:
            start.record()
            run()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) / 1e3 for start, end in events]
    found = []
    for _ in range(n):
        start = time.perf_counter()
        run()
        found.append(time.perf_counter() - start)
    return found


def _signature(site: Site, outside: list[fx.Node]) -> tuple:
    """What makes two calls time alike: the layer class, whether autograd records, and the
    shapes, strides, dtypes and devices of what they read (as dynamo traced them)."""
    keys = tuple(example_key(example_value(n)) if example_value(n) is not None else ("node", n.name) for n in outside)
    return (type(site.module), site.needs_grad, keys)


def _describe(sub: Substitution, outside: list[fx.Node], values: list[Any]) -> str:
    """The call's tensor arguments, `float32[4, 8]`, in the forward's order."""
    by_node = dict(zip(outside, values))
    args = [sub.inputs[a.index] for a in (*sub.spec.args, *(v for _k, v in sub.spec.kwargs)) if isinstance(a, InputRef)]
    tensors = [by_node[n] for n in args if isinstance(by_node.get(n), torch.Tensor)]
    return ", ".join(f"{str(t.dtype).removeprefix('torch.')}[{', '.join(map(str, t.shape))}]" for t in tensors) or "-"
