"""What the shared `wrong_output` check compares on the compiled pass: a kernel's outputs must be shaped like the original's.

The pass has both at compile time: the original call's outputs carry dynamo's example values
(fake tensors: shape, dtype, device), and the prepared substitution's traced kernel carries its
own. A kernel whose output differs in structure, shape (symbolic sizes must be provably equal:
no guard is added), dtype or device keeps the original forward with `Reason.WRONG_OUTPUT`.

A kernel that cannot be traced (it runs as an opaque op) is checked only where it returns the
wrong structure; its shapes are known only when it runs (the opaque op's fake implementation
takes the original's), so `verify=True` is the check that runs it.
"""

from __future__ import annotations

from typing import Any

from torch import fx

from ..dtensor import is_dtensor
from ..errors import KernelFxError
from .prepare import Substitution
from .sites import Site, example_value


def expected_outputs(candidate: Any) -> tuple | None:  # candidate: a decide.Candidate
    """The original call's outputs as dynamo traced them (example values), or None when one has none."""
    sub = candidate.substitution
    if not isinstance(sub, Substitution):
        return None
    expected = [example_value(o) if isinstance(o, fx.Node) else None for o in original_outputs(sub.site)]
    return None if not expected or any(e is None for e in expected) else tuple(expected)


def kernel_outputs(candidate: Any) -> tuple | KernelFxError | None:  # candidate: a decide.Candidate
    """The traced kernel's outputs (fake values), a `KernelFxError` when they do not line up with the
    original's structure, or None: not traceable (an opaque op), or DTensor inputs."""
    sub = candidate.substitution
    if not isinstance(sub, Substitution):
        return None
    examples = [example_value(n) for n in sub.inputs]
    if any(is_dtensor(e) for e in examples):
        return None  # local-shard calls: the dtensor_inputs check's rules
    traced = sub.traced if sub.traced is not None else candidate.context.trace_cache.trace(sub.forward, sub.spec, examples)
    if isinstance(traced, KernelFxError):  # CallSpec.flatten: the kernel's output structure is not the original's
        return traced
    if not isinstance(traced, fx.GraphModule):
        return None  # not traceable: it runs as an opaque op
    return tuple(_traced_outputs(traced))


def original_outputs(site: Site) -> list[Any]:
    """The values the original call returned, one per tensor output (also the unused ones)."""
    if site.marked:
        return list(site.nodes[-1].args[1:])  # the exit marker's arguments
    return list(site.outputs)


def _traced_outputs(traced: fx.GraphModule) -> list[Any]:
    output = next(n for n in reversed(traced.graph.nodes) if n.op == "output")
    values = output.args[0] if isinstance(output.args[0], (tuple, list)) else (output.args[0],)
    return [v.meta.get("val") if isinstance(v, fx.Node) else v for v in values]
