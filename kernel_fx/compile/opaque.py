"""Kernels that cannot be traced run as one opaque op: `torch.ops.kernel_fx.opaque_kernel`.

AOTAutograd and inductor see a registered op: its output metadata comes from running the
module's *original* forward on fake tensors, and its backward (when autograd needs one and the
kernel has it) recomputes the kernel's forward with autograd and differentiates that — itself
another opaque op, so the kernel is never traced. Each site registers an `OpaqueSite` under a
string id that the graph carries.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .standin import CallSpec

_sites: dict[str, OpaqueSite] = {}
_ids = itertools.count()


@dataclass(frozen=True)
class OpaqueSite:
    kernel_forward: Callable[..., Any]
    original_forward: Callable[..., Any]
    spec: CallSpec

    def run(self, forward: Callable[..., Any], inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        this, args, kwargs = self.spec.bind(tuple(inputs), strict=False)
        return self.spec.flatten(forward(this, *args, **kwargs))


def register(site: OpaqueSite, label: str) -> str:
    """Keep `site` for the graph's lifetime (the process: graphs do not say when they die)."""
    site_id = f"{label}#{next(_ids)}"
    _sites[site_id] = site
    return site_id


def _fresh(outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """An op's outputs may alias neither its inputs nor each other (a forward may return an
    input or a view of one; a gradient may be the incoming one): clone those that do."""
    taken = {t.untyped_storage().data_ptr() for t in inputs}
    fresh = []
    for out in outputs:
        ptr = out.untyped_storage().data_ptr()
        if ptr in taken:
            out = out.clone()
            ptr = out.untyped_storage().data_ptr()
        taken.add(ptr)
        fresh.append(out)
    return fresh


@torch.library.custom_op("kernel_fx::opaque_kernel", mutates_args=())
def opaque_kernel(site: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    entry = _sites[site]
    with torch.no_grad():
        return _fresh(entry.run(entry.kernel_forward, inputs), inputs)


@opaque_kernel.register_fake
def _(site: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    entry = _sites[site]
    return [o.clone() for o in entry.run(entry.original_forward, inputs)]


def _autograd_back_on() -> Any:
    """Inside an op's kernel the dispatcher excludes the autograd keys; the backward recomputes
    with autograd, so it lifts that exclusion for its own body."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for name in ("ADInplaceOrView", "AutogradOther", "AutogradNestedTensor", "AutogradCPU", "AutogradCUDA", "AutogradXPU", "AutogradMPS"):
        key = getattr(torch._C.DispatchKey, name, None)
        if key is not None:
            exclude = exclude.remove(key)
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude)


@torch.library.custom_op("kernel_fx::opaque_kernel_backward", mutates_args=())
def opaque_kernel_backward(site: str, inputs: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
    entry = _sites[site]
    with _autograd_back_on(), torch.enable_grad():
        leaves = [t.detach().requires_grad_(t.is_floating_point() or t.is_complex()) for t in inputs]
        outputs = entry.run(entry.kernel_forward, leaves)
        wanted = [leaf for leaf in leaves if leaf.requires_grad]
        pairs = [(o, g) for o, g in zip(outputs, grads) if o.requires_grad]
        found = torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True) if pairs else [None] * len(wanted)
    by_leaf = dict(zip(map(id, wanted), found))
    result = [torch.zeros_like(t) if by_leaf.get(id(leaf)) is None else by_leaf[id(leaf)] for t, leaf in zip(inputs, leaves)]
    return _fresh(result, [*inputs, *grads])


@opaque_kernel_backward.register_fake
def _(site: str, inputs: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.empty_like(t) for t in inputs]


def _setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
    site, tensors = inputs
    ctx.site = site
    ctx.shapes = [(o.shape, o.dtype, o.device) for o in output]
    ctx.save_for_backward(*tensors)


def _backward(ctx: Any, grads: list[torch.Tensor | None]) -> tuple[None, list[torch.Tensor]]:
    full = [torch.zeros(s, dtype=d, device=v) if g is None else g for g, (s, d, v) in zip(grads, ctx.shapes)]
    return None, opaque_kernel_backward(ctx.site, list(ctx.saved_tensors), full)


opaque_kernel.register_autograd(_backward, setup_context=_setup_context)
