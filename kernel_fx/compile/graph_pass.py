"""The hubkernels graph pass as named steps, in the order data flows:

    find_sites (sites.py, pure) -> decide (decide.py + checks.py; prepares substitutions, pure)
        -> tune (autotune.py, with autotune=True: whole-graph timings; returns a `Tuning`, pure)
        -> apply (apply.py, the only mutator) -> GraphRecord

`requires` and `ensures` state what holds before and after: dynamo's graph comes in linted, and
goes out linted with no marker op left (the inner compiler must never see one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from torch import fx

from .. import markers
from ..checks import Check, ordered
from ..graph_records import GraphRecord, GraphSnapshot, SiteDiff, SubstitutionKind, op_lines
from ..report import Report
from .apply import apply
from .autotune import Tuning, tune
from .checks import DEFAULT_CHECKS
from .decide import Compiler, PassContext, SiteDecision, decide
from .frame import FrameInfo, current_compile_id
from .options import Options
from .sites import Site, find_sites

logger = logging.getLogger(__name__)


def requires(gm: fx.GraphModule) -> None:
    """Before the pass: the graph is well formed."""
    gm.graph.lint()


def ensures(gm: fx.GraphModule) -> None:
    """After the pass: well formed, and no marker op left (in bodies of higher-order ops neither)."""
    gm.graph.lint()
    left = [n.name for n in gm.graph.nodes if n.op == "call_function" and markers.is_marker(n.target)]
    if left:
        raise AssertionError(f"kernel_fx left marker ops in the graph: {', '.join(left)}")
    for body, _inputs in _bodies(gm, []):
        ensures(body)


def _bodies(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> list[tuple[fx.GraphModule, list[Any]]]:
    """The body graphs of activation checkpointing (`tag_activation_checkpoint`) and of `torch.cond`
    branches in `gm`, each with example inputs: the real tensor where the body's input is one of
    `gm`'s inputs (parameters, so sites bind their module's weights), else dynamo's fake value.
    Other higher-order ops are not entered: their marked calls run the original forward, unreported."""
    import torch

    ops = torch.ops.higher_order
    checkpoint, cond = getattr(ops, "tag_activation_checkpoint", None), getattr(ops, "cond", None)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    real = dict(zip(placeholders, example_inputs))

    def example(value: Any) -> Any:
        return real.get(value, value.meta.get("example_value", value.meta.get("val"))) if isinstance(value, fx.Node) else value

    found = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in (checkpoint, cond) or node.target is None:
            continue
        if node.target is checkpoint:
            body_nodes, operands = node.args[:1], node.args[1:]
        else:  # cond(pred, true_fn, false_fn, operands)
            body_nodes, operands = node.args[1:3], node.args[3]
        for body_node in body_nodes:
            body = getattr(gm, str(body_node.target), None) if isinstance(body_node, fx.Node) else None
            if isinstance(body, fx.GraphModule):
                found.append((body, [example(a) for a in operands]))
    return found


def run_pass(gm: fx.GraphModule, example_inputs: Sequence[Any], options: Options, *, frame: FrameInfo,
             compile_fn: Compiler, inner: str, index: int, checks: Sequence[Check] | None = None) -> GraphRecord:
    """Find, decide, apply on `gm` (mutated in place); return what was done as a `GraphRecord`.
    `checks` default to `DEFAULT_CHECKS` plus the options' own, in phase order."""
    start = time.perf_counter()
    if checks is None:
        checks = ordered((*DEFAULT_CHECKS, *options.checks))
    requires(gm)
    before = GraphSnapshot.of(gm, keep=True)
    # Checkpointed layers and cond branches first: their sites, decided alike (not autotuned), so that
    # the outer graph's autotune compiles them as they will run, without markers.
    bodies = _bodies(gm, example_inputs)
    in_bodies = [_one_graph(body, inputs, replace(options, autotune=False), frame, compile_fn, inner, checks) for body, inputs in bodies]
    decided, diffs, tuning = _one_graph(gm, example_inputs, options, frame, compile_fn, inner, checks)
    for inner_decided, inner_diffs, _ in in_bodies:
        decided += inner_decided
        diffs += inner_diffs
    if bodies:
        gm.recompile()
    ensures(gm)
    record = GraphRecord(
        index=index,
        compile_id=current_compile_id(),
        before=before,
        after=GraphSnapshot.of(gm, keep=True),
        decisions=[decision for d in decided for decision in d.decisions],
        inner=inner,
        site_diffs=diffs,
        autotune=list(tuning.results),
        autotune_variants=list(tuning.variants),
        autotune_note=tuning.note,
    )
    record.pass_seconds = time.perf_counter() - start
    logger.info("kernel_fx hubkernels graph %s: %s", record.index, Report(record.decisions).summary())
    return record


def _one_graph(gm: fx.GraphModule, example_inputs: Sequence[Any], options: Options, frame: FrameInfo, compile_fn: Compiler,
               inner: str, checks: Sequence[Check]) -> tuple[list[SiteDecision], list[SiteDiff], Tuning]:
    sites = find_sites(gm, example_inputs, frame)
    context = PassContext(options, gm, example_inputs, sites, compile_fn, inner)
    decided = decide(sites, context, checks)
    tuning = tune(gm, example_inputs, decided, compile_fn, inner) if options.autotune else Tuning()
    decided = tuning.applied_to(decided)
    traced_in = [_traced_in_diff(d.traced_in) for d in decided if d.traced_in is not None]  # before apply erases markers
    diffs = apply(gm, [d.substitution for d in decided if d.substitution is not None])
    return decided, traced_in + diffs, tuning


def _traced_in_diff(site: Site) -> SiteDiff:
    before = ("(the original forward was not traced: the kernel went in while dynamo traced the call)",)
    return SiteDiff(site.path, site.call_index, site.layer_name, SubstitutionKind.TRACE_TIME, before, op_lines(site.nodes))
