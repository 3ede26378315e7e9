"""Keep a layer's kernels only where the whole graph is faster with them: `options={"autotune": True}`.

The sites a kernel was prepared for are grouped by layer name. Whole-graph variants are compiled by
the inner compiler and timed on the real example inputs (copies of those the graph writes to; the
gradients of a timed backward are returned, never accumulated in the model's), in this order:

    every kernel (the default pass) -> no kernel (the inner compiler alone) -> without each group

and the fastest is chosen, but a variant other than the default only when its median is at most
`MARGIN` times the default's: a tie keeps the default. A group the chosen variant leaves out keeps
its original forward at every site, with `Reason.SLOWER_THAN_ORIGINAL`. Timing the whole graph
sees what the inner compiler gains across calls (fusions into a kernel's neighbours), which a call
timed alone misses. With one group, "no kernel" is "without that group": two variants decide it.

Bound: the compiles for timing may take at most `COMPILE_BUDGET - 1` times the first one's (the
default graph: what the default pass compiles), so that with the final compile of the chosen graph
the inner compiler's time stays within `COMPILE_BUDGET` (3) times the default's. A variant is
compiled only while the time spent so far plus the mean compile so far fits; the variants left
out are named in `Tuning.note`. In practice: "every kernel" and "no kernel" always, "without
<group>" only where compiles are cheap, so with several groups on one graph they are often decided
together (all kept, or all left out when the inner compiler alone is faster).

Timing: medians over `ROUNDS` rounds alternating between the variants, each about `ROUND_SECONDS`
per variant, after warm-up; CUDA events on a GPU, `time.perf_counter` on the CPU. Forward only
where no output needs a gradient; forward and backward where one does. Every timing and choice is
data: `Tuning` (returned by `tune`, never read back from shared state) gives the graph record its
`autotune` (one `AutotuneResult` per group) and `autotune_variants` (one `VariantTiming` per
variant), and each site's decision its figures under the name `faster_in_graph`.

A graph whose default variant cannot be compiled or timed is compiled as without the option, with
`GraphRecord.autotune_note` saying why. Known gap: a graph traced with dynamic shapes gets the
example inputs' sizes as plain numbers, which inductor (torch 2.13) does not compile
(`DataDependentOutputException`): such graphs keep every kernel, with that note; "eager" and
"aot_eager" time them.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import fx

from ..decisions import Outcome, Reason, Rejected
from ..graph_records import AutotuneResult, VariantTiming
from .apply import apply
from .prepare import first_line
from .region import concrete, fresh_copy, isolated, moved, rng_restored, written_inputs
from .sites import example_value

if TYPE_CHECKING:
    from .decide import SiteDecision
    from .prepare import Substitution

logger = logging.getLogger(__name__)

CHECK = "faster_in_graph"  # the name the figures and rejections carry in each site's decision
MARGIN = 0.98  # choose a variant other than the default when its median <= MARGIN * the default's
COMPILE_BUDGET = 3.0  # the inner compiler's time with autotune, at most this times the default's
ROUND_SECONDS = 0.02  # timed per variant and round
ROUNDS = 5
_WARMUP = 3
_MAX_REPS = 500

Compiler = Callable[[fx.GraphModule, list[Any]], Callable[..., Any]]
EVERY_KERNEL = "every kernel"
NO_KERNEL = "no kernel"
LEFT_OUT = "left out: compile budget"


@dataclass(frozen=True)
class GroupTiming:
    """A group's figures in its sites' decisions: the whole graph's median with the group's
    kernels and without them (None: no variant without them was timed), and which ran."""

    group: str
    with_ms: float | None
    without_ms: float | None
    compared: str
    kept: bool

    def __str__(self) -> str:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.4g} ms"

        return f"whole graph {ms(self.with_ms)} with {self.group}, {ms(self.without_ms)} without ({self.compared}): {'kernel' if self.kept else 'original'}"


@dataclass(frozen=True)
class Tuning:
    """What `tune` found for one graph.

    Attributes:
        variants: every whole-graph variant, timed or left out by the budget, in the order tried.
        results: one `AutotuneResult` per group of sites (layer name), in graph order.
        refused: the groups that keep their original forward, with the rejection their sites get.
        figures: each group's `GroupTiming`, recorded in its sites' decisions under `CHECK`.
        note: why nothing was timed, or which variants the budget left out; None otherwise.
    """

    variants: tuple[VariantTiming, ...] = ()
    results: tuple[AutotuneResult, ...] = ()
    refused: dict[str, Rejected] = field(default_factory=dict)
    figures: dict[str, GroupTiming] = field(default_factory=dict)
    note: str | None = None

    def applied_to(self, decided: Sequence[SiteDecision]) -> list[SiteDecision]:
        """`decided` with each refused group's sites keeping their original forward, and every
        tuned site's decision carrying its group's figures."""
        found = []
        for d in decided:
            group = d.substitution.site.layer_name if d.substitution is not None else None
            if group not in self.figures:
                found.append(d)
                continue
            figures = (*d.decision.figures, (CHECK, self.figures[group]))
            rejected = self.refused.get(group)
            if rejected is None:
                found.append(replace(d, decision=replace(d.decision, figures=figures)))
            else:
                decision = replace(d.decision, outcome=Outcome.ORIGINAL, rejected=rejected, variant=None, figures=figures)
                found.append(replace(d, decision=decision, substitution=None))
        return found


def tune(gm: fx.GraphModule, example_inputs: Sequence[Any], decided: Sequence[SiteDecision],
         compile_fn: Compiler, inner: str) -> Tuning:
    """Time whole-graph variants of `gm` (not mutated) with and without each group's kernels."""
    groups: dict[str, list[Substitution]] = {}
    for d in decided:
        if d.substitution is not None:
            groups.setdefault(d.substitution.site.layer_name, []).append(d.substitution)
    if not groups:
        return Tuning()
    plan = [(EVERY_KERNEL, ()), (NO_KERNEL, tuple(groups))]
    if len(groups) > 1:  # the largest groups first: they weigh most
        plan += [(f"without {g}", (g,)) for g in sorted(groups, key=lambda g: -len(groups[g]))]
    try:
        values = [concrete(x) for x in example_inputs]
    except Exception as exc:  # noqa: BLE001 - compile as without autotune, and say why
        return _untimed(f"not timed: the example inputs have no values ({type(exc).__name__}: {first_line(exc)})")
    grad = torch.is_grad_enabled() and _needs_grad(gm)
    try:  # the model's own tensors, but copies of those the graph writes to (a buffer's add_)
        written = written_inputs(gm, [n for n in gm.graph.nodes if n.op == "placeholder"])
    except ValueError as exc:
        return _untimed(f"not timed: {exc}")
    args = [fresh_copy(v, grad and v.requires_grad) if i in written and isinstance(v, torch.Tensor) else v
            for i, v in enumerate(values)]
    device = next((v.device for v in values if isinstance(v, torch.Tensor)), torch.device("cpu"))
    with rng_restored(values):
        compiled = _compile_variants(gm, plan, groups, compile_fn, args, grad)
        if isinstance(compiled, str):
            return _untimed(compiled)
        variants, runs = compiled
        try:
            medians = _race(runs, device)
        except Exception as exc:  # noqa: BLE001 - keep every kernel, as without autotune, and say why
            logger.warning("kernel_fx autotune: timing failed: %s", exc)
            return _untimed(f"not timed ({type(exc).__name__}: {first_line(exc)})")
    timed = [i for i, v in enumerate(variants) if v.compile_s is not None]
    for i, ms in zip(timed, medians):
        variants[i] = replace(variants[i], ms=ms, timed="forward+backward" if grad else "forward")
    return _choose(variants, groups, inner)


def _compile_variants(gm: fx.GraphModule, plan: list[tuple[str, tuple[str, ...]]], groups: dict[str, list[Substitution]],
                      compile_fn: Compiler, args: list[Any], grad: bool) -> tuple[list[VariantTiming], list[Callable[[], None]]] | str:
    """Each planned variant compiled while the budget allows (see the module docstring), as a
    `VariantTiming` and, for those compiled, a function that runs it; or why none could be."""
    variants: list[VariantTiming] = []
    runs: list[Callable[[], None]] = []
    spent, first = 0.0, None
    for name, without in plan:
        if first is not None and spent + spent / len(runs) > (COMPILE_BUDGET - 1) * first:
            variants.append(VariantTiming(name, without, note=LEFT_OUT))
            continue
        subs = [s for g, ss in groups.items() if g not in without for s in ss]
        start = time.perf_counter()
        try:
            runs.append(_compiled_run(_variant(gm, subs), compile_fn, args, grad))
        except Exception as exc:  # noqa: BLE001 - a variant that does not compile is not chosen
            if first is None:
                return f"not timed: compiling the graph failed ({type(exc).__name__}: {first_line(exc)})"
            spent += time.perf_counter() - start
            logger.warning("kernel_fx autotune: compiling %s failed: %s", name, exc)
            variants.append(VariantTiming(name, without, note=f"not compiled ({type(exc).__name__}: {first_line(exc)})"))
            continue
        seconds = time.perf_counter() - start
        spent += seconds
        first = first if first is not None else seconds
        variants.append(VariantTiming(name, without, compile_s=seconds))
    return variants, runs


def _untimed(note: str) -> Tuning:
    logger.warning("kernel_fx autotune: %s", note)
    return Tuning(note=note)


def _choose(variants: list[VariantTiming], groups: dict[str, list[Substitution]], inner: str) -> Tuning:
    """The fastest variant when it beats the default by `MARGIN`, else the default; per group, what
    that means for its sites."""
    default = variants[0]
    assert default.ms is not None  # the default is always compiled and timed, or nothing is
    best = min((v for v in variants if v.ms is not None), key=lambda v: v.ms)  # type: ignore[arg-type, return-value]
    chosen = best if best.ms is not None and best.ms <= MARGIN * default.ms else default
    variants = [replace(v, chosen=v is chosen) for v in variants]
    results, refused, figures = [], {}, {}
    for group, subs in groups.items():
        kept = group not in chosen.without
        if kept:
            without = min((v for v in variants if v.ms is not None and group in v.without),
                          key=lambda v: v.ms, default=None)  # type: ignore[arg-type, return-value]
            with_ms, without_ms = chosen.ms, None if without is None else without.ms
            compared = f"{chosen.name} vs {without.name if without is not None else '-'}"
        else:
            with_ms, without_ms = default.ms, chosen.ms
            compared = f"{default.name} vs {chosen.name}"
        timing = GroupTiming(group, with_ms, without_ms, compared, kept)
        figures[group] = timing
        if not kept:
            refused[group] = Rejected(Reason.SLOWER_THAN_ORIGINAL, f"{timing} ({inner})", check=CHECK)
        labels = tuple(f"{s.site.path or '<root>'} #{s.site.call_index}" for s in subs)
        results.append(AutotuneResult(group, compared, with_ms, without_ms, kept, labels, default.timed))
        logger.info("kernel_fx autotune %s: %s", group, timing)
    left_out = [v.name for v in variants if v.note == LEFT_OUT]
    note = f"variants not timed: {', '.join(left_out)} (compile budget {COMPILE_BUDGET:g}x the default's)" if left_out else None
    return Tuning(tuple(variants), tuple(results), refused, figures, note)


def _needs_grad(gm: fx.GraphModule) -> bool:
    """Whether autograd records through any of the graph's outputs (as dynamo traced them)."""
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    return any(isinstance(example_value(n), torch.Tensor) and example_value(n).requires_grad for n in output.all_input_nodes)


def _variant(gm: fx.GraphModule, subs: list[Substitution]) -> fx.GraphModule:
    """A copy of `gm` with `subs` put in (as the pass puts them in) and every marker removed."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    graph.output(graph.graph_copy(gm.graph, env))
    copy = fx.GraphModule(gm, graph)
    apply(copy, [moved(s, env) for s in subs])
    return copy


# -- timing ---------------------------------------------------------------------------------------


def _compiled_run(gm: fx.GraphModule, compile_fn: Compiler, args: list[Any], grad: bool) -> Callable[[], None]:
    """`gm` compiled by the inner compiler on `args` (copies), warmed up (lazy backward compiles
    included), as a function that runs it once: forward, or forward and backward."""
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]

    def forward() -> None:
        with torch.no_grad():
            fn(*args)

    def forward_backward() -> None:  # autograd.grad: the gradients are returned, no `.grad` of the model's is touched
        with torch.enable_grad():
            outs = [o for o in fn(*args) if isinstance(o, torch.Tensor) and o.requires_grad]
            if outs and leaves:
                torch.autograd.grad(outs, leaves, [torch.ones_like(o) for o in outs], allow_unused=True)

    run = forward_backward if grad else forward
    with isolated(), (torch.enable_grad() if grad else torch.no_grad()):
        fn = compile_fn(gm, list(args))
        for _ in range(_WARMUP):
            run()
    return run


def _race(runs: list[Callable[[], None]], device: torch.device) -> list[float]:
    """Median milliseconds of each run, over rounds that alternate between them."""
    once = [min(_samples(run, 2, device)) for run in runs]
    reps = [max(3, min(_MAX_REPS, int(ROUND_SECONDS / max(seconds, 1e-7)))) for seconds in once]
    samples: list[list[float]] = [[] for _ in runs]
    for _ in range(ROUNDS):
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
