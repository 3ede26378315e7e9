"""The hubkernels graph pass as named steps, in the order data flows:

    find_sites (sites.py, pure) -> decide (decide.py + checks.py; prepares substitutions, pure)
        -> apply (apply.py, the only mutator) -> GraphRecord

`requires` and `ensures` state what holds before and after: dynamo's graph comes in linted, and
goes out linted with no marker op left (the inner compiler must never see one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from torch import fx

from .. import markers
from ..graph_records import GraphRecord, GraphSnapshot
from ..report import Report
from .apply import apply
from .autotune import MEMO_KEY as AUTOTUNE
from .checks import DEFAULT_CHECKS
from .decide import Check, Compiler, PassContext, decide
from .frame import FrameInfo, current_compile_id
from .options import Options
from .sites import find_sites

logger = logging.getLogger(__name__)


def requires(gm: fx.GraphModule) -> None:
    """Before the pass: the graph is well formed."""
    gm.graph.lint()


def ensures(gm: fx.GraphModule) -> None:
    """After the pass: well formed, and no marker op left."""
    gm.graph.lint()
    left = [n.name for n in gm.graph.nodes if n.op == "call_function" and markers.is_marker(n.target)]
    if left:
        raise AssertionError(f"kernel_fx left marker ops in the graph: {', '.join(left)}")


def run_pass(gm: fx.GraphModule, example_inputs: Sequence[Any], options: Options, *, frame: FrameInfo,
             compile_fn: Compiler, inner: str, index: int, checks: Sequence[Check] = DEFAULT_CHECKS) -> GraphRecord:
    """Find, decide, apply on `gm` (mutated in place); return what was done as a `GraphRecord`."""
    start = time.perf_counter()
    requires(gm)
    before = GraphSnapshot.of(gm, keep=True)
    sites = find_sites(gm, example_inputs, frame)
    context = PassContext(options, gm, example_inputs, sites, compile_fn, inner)
    decided = decide(sites, context, checks)
    diffs = apply(gm, [d.substitution for d in decided if d.substitution is not None])
    ensures(gm)
    tuner = context.memos.get(AUTOTUNE)
    record = GraphRecord(
        index=index,
        compile_id=current_compile_id(),
        before=before,
        after=GraphSnapshot.of(gm, keep=True),
        decisions=[d.decision for d in decided],
        inner=inner,
        site_diffs=diffs,
        autotune=tuner.results if tuner is not None else [],
        autotune_note=tuner.note if tuner is not None else None,
    )
    record.pass_seconds = time.perf_counter() - start
    logger.info("kernel_fx hubkernels graph %s: %s", record.index, Report(record.decisions).summary())
    return record
