"""Verified substitution in the compiled pass: `options={"verify": True}`.

For each distinct substituted call — same kernel, same original, same layout and the same input
shapes, strides and dtypes — the kernel runs as the pass puts it in (its region with the kernel,
`region.region_with_kernel`, run eagerly) on the real values the call reads, and the original
forward runs on copies of them, in float64 where it can (see `kernel_fx.checks.verification`). The
kernel stays when every output is within the tolerance of its dtype; otherwise the site keeps its
original forward with `Reason.NUMERICALLY_DIFFERENT` and the figures. The measured error goes to
the site's `Decision.measured`, shown in the report table.

Real values: dynamo hands the backend real example inputs, not the values inside the graph, so
the graph runs once, eagerly, as traced (`region.run_graph`: no model state changes).

Cost, paid only with the option on: one eager run of each graph, and per distinct call one run of
its kernel region and one (float64) run of the original. A graph that cannot be run on its example
inputs (e.g. the body of a checkpointed layer, whose inputs are fake) keeps its kernels
unverified, with a warning in the log and no figures on their decisions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx

from ..checks.verification import Verify, describe, measure, reference_output
from ..decisions import Measured
from ..originals import original_forward
from .prepare import Substitution, example_key, first_line, spec_key
from .region import fresh_copy, isolated, region_inputs, region_with_kernel, rng_restored, run_graph
from .sites import Site

logger = logging.getLogger(__name__)

MEMO_KEY = "verify"


def measure_candidate(candidate: Any) -> Measured | None:  # candidate: a decide.Candidate
    """With verify on: the kernel's measured error on the real inputs (once per distinct call), or None."""
    context, verify = candidate.context, candidate.context.options.verify
    if verify is None:
        return None
    verifier: Verifier = context.memo(MEMO_KEY, lambda: Verifier(context.gm, context.example_inputs, context.sites))
    sub = candidate.substitution
    return verifier.check(sub, verify) if isinstance(sub, Substitution) else None


class Verifier:
    """Measures the substitutions of one graph against their original forwards, once per
    distinct call; runs the graph (once, on the first check) to get the values calls read."""

    def __init__(self, gm: fx.GraphModule, example_inputs: Sequence[Any], sites: Sequence[Site]) -> None:
        self.gm = gm
        self.example_inputs = example_inputs
        self.needed = {n for site in sites if site.module is not None and site.binding is not None for n in region_inputs(site)}
        self.note: str | None = None
        self._values: dict[fx.Node, Any] | None = None
        self._measured: dict[tuple, Measured | None] = {}

    def check(self, sub: Substitution, verify: Verify) -> Measured | None:
        values = self._real_values()
        if values is None:
            return None
        outside = region_inputs(sub.site)
        if any(n not in values for n in outside):
            return None
        key = (sub.forward, sub.original, sub.how, spec_key(sub.spec), verify,
               tuple(example_key(values[n]) for n in outside))
        if key not in self._measured:
            self._measured[key] = self._measure(sub, outside, values, verify)
        return self._measured[key]

    def _real_values(self) -> dict[fx.Node, Any] | None:
        if self._values is None and self.note is None:
            try:
                self._values = run_graph(self.gm, self.example_inputs, self.needed)
            except Exception as exc:  # noqa: BLE001 - any failure: the kernels stay unverified, and the log says why
                self.note = f"not verified: running the graph on its example inputs failed ({type(exc).__name__}: {first_line(exc)})"
                logger.warning("kernel_fx verify: %s", self.note)
        return self._values

    def _measure(self, sub: Substitution, outside: list[fx.Node], values: dict[fx.Node, Any], verify: Verify) -> Measured | None:
        site = sub.site
        assert site.module is not None and site.binding is not None  # a prepared substitution's site is bound
        label = f"{site.path or '<root>'} #{site.call_index}"

        def value(v: Any) -> Any:
            if isinstance(v, tuple):
                return tuple(value(x) for x in v)
            return values[v] if isinstance(v, fx.Node) else v

        args = tuple(value(a) for a in site.binding.args)
        kwargs = {k: value(v) for k, v in site.binding.kwargs.items()}
        region_values = [values[n] for n in outside]
        try:
            with isolated(), torch.no_grad(), rng_restored(region_values):
                kernel = region_with_kernel(sub, outside, region_values)
                actual = kernel(*[fresh_copy(v, False) for v in region_values])
            reference, precision = reference_output(original_forward(site.module), site.module, args, kwargs, verify)
            used = [r for r, o in zip(sub.spec.flatten(reference), site.outputs) if o is not None]
        except Exception as exc:  # noqa: BLE001 - unmeasured: keep the kernel, as without the option, and say why
            logger.warning("kernel_fx verify: measuring %s failed (%s: %s); its kernel stays unverified",
                           label, type(exc).__name__, first_line(exc))
            return None
        return measure(tuple(actual), tuple(used), verify, describe(args, kwargs), precision)
