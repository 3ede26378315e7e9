"""The per-site check for DTensor inputs (tensor parallel): a kernel runs on DTensors only as its
class declares (`dtensor = "local"` or `"native"`, see `kernel_fx.dtensor`) and where the graph
values' placements allow it; otherwise the site keeps its original forward with `Reason.DTENSOR`
— never the crash of a custom op without a sharding strategy.
"""

from __future__ import annotations

from torch import fx

from .. import dtensor
from ..decisions import Rejected
from .decide import Candidate
from .sites import example_value


def dtensor_inputs(candidate: Candidate) -> Rejected | None:
    """The kernel can take the call's DTensor values (arguments, the module's own tensors) as placed."""
    binding = candidate.site.binding
    kernel = candidate.plan.kernel
    if binding is None or kernel is None:
        return None
    activations = dtensor.flat_tensors(_examples([*binding.args, *binding.kwargs.values()]))
    own = [example_value(n) for n in binding.tensors.values()]
    return dtensor.problem(kernel, activations, own)


def _examples(values: list) -> list:
    return [tuple(_examples(list(v))) if isinstance(v, tuple) else example_value(v) if isinstance(v, fx.Node) else v for v in values]
