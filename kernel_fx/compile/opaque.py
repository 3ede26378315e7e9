"""Kernels that cannot be traced run as one opaque op: `torch.ops.kernel_fx.opaque_kernel`, or
`writing_op(n)` for a kernel that writes some of its inputs in place.

AOTAutograd and inductor see a registered op: its output metadata comes from running the
module's *original* forward on fake tensors (the module's state tensors made fake too), and its
backward (when autograd needs one and the kernel has it) recomputes the kernel's forward with
autograd and differentiates that — itself another opaque op, so the kernel is never traced. Each
site registers an `OpaqueSite` under a string id that the graph carries.

What an op must declare, and what it cannot express (DESIGN §7; issue 14):
- an input the kernel writes must be declared (`mutates_args`), or inductor reorders reads of it
  around the op: `effects_on_fakes` finds the writes by running the kernel once on fake copies,
  and such inputs go in the writing op's `written` list;
- an op's output may not alias an input: outputs that do are copied, which loses a caller's later
  writes through them — `prepare` refuses such sites;
- the backward re-runs the kernel's forward, so a kernel that writes anything runs its writes
  twice when autograd records — `prepare` refuses those too.
When the kernel cannot run on fake tensors, its first real call runs on copies of its inputs and
checks the same things; a kernel that breaks them then runs its site's original forward instead.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .standin import CallSpec, ModuleTemplate

logger = logging.getLogger(__name__)

_sites: dict[str, OpaqueSite] = {}
_ids = itertools.count()


@dataclass(frozen=True)
class Effects:
    """What one run of a kernel did besides returning its outputs: the input slots it wrote in
    place, the module state tensors (not graph values) it wrote, and which outputs alias which
    input slots, as (output index, slot)."""

    written: frozenset[int]
    state_written: tuple[str, ...]
    aliased: tuple[tuple[int, int], ...]


@dataclass
class OpaqueSite:
    """One site's opaque call. `written`: the input slots the kernel writes (passed to the writing
    op); `checked`: whether those effects were found at compile time; `fallback`: why the
    original forward runs instead, once a real call showed the kernel unsafe."""

    kernel_forward: Callable[..., Any]
    original_forward: Callable[..., Any]
    spec: CallSpec
    written: tuple[int, ...] = ()
    needs_grad: bool = False
    checked: bool = True
    fallback: str | None = field(default=None)

    def run(self, forward: Callable[..., Any], inputs: Sequence[Any], template: ModuleTemplate | None = None) -> tuple[torch.Tensor, ...]:
        this, args, kwargs = self.spec.bind(tuple(inputs), strict=False, template=template)
        return self.spec.flatten(forward(this, *args, **kwargs))

    def flat(self, inputs: Sequence[torch.Tensor], written: Sequence[torch.Tensor] = ()) -> list[torch.Tensor]:
        """The call's inputs in slot order, from the op's read-only and written lists."""
        read, wrote = iter(inputs), iter(written)
        return [next(wrote) if i in self.written else next(read) for i in range(len(inputs) + len(written))]

    @property
    def forward(self) -> Callable[..., Any]:
        return self.original_forward if self.fallback is not None else self.kernel_forward


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


# -- finding what a kernel does -------------------------------------------------------------------


def _aliases(outputs: Sequence[torch.Tensor], inputs: Sequence[Any]) -> tuple[tuple[int, int], ...]:
    return tuple((j, i) for j, out in enumerate(outputs) for i, t in enumerate(inputs)
                 if isinstance(t, torch.Tensor) and torch._C._is_alias_of(out, t))


def _fake_mode_of(values: Sequence[Any]) -> Any:
    from torch._guards import detect_fake_mode
    from torch._subclasses.fake_tensor import FakeTensor

    return next((v.fake_mode for v in values if isinstance(v, FakeTensor)), None) or detect_fake_mode()


def _faked(template: ModuleTemplate, fake_mode: Any, made: dict[int, torch.Tensor] | None = None) -> ModuleTemplate:
    """`template` with fakes of its state tensors (`made`: id of each real tensor -> its fake)."""
    from torch._subclasses.fake_tensor import FakeTensor

    def convert(t: torch.Tensor) -> torch.Tensor:
        if isinstance(t, FakeTensor):
            return t
        fake = fake_mode.from_tensor(t)
        if made is not None:
            made[id(t)] = fake
        return fake

    return template.with_tensors(convert)


def effects_on_fakes(forward: Callable[..., Any], spec: CallSpec, examples: Sequence[Any]) -> Effects | Exception:
    """Run `forward` once on fake copies of the call's example values (and of the module's state
    tensors) and say what it wrote and aliased; the exception when it cannot run on fakes."""
    fake_mode = _fake_mode_of(examples)
    if fake_mode is None:
        return ValueError("the call has no fake example values")
    try:
        with fake_mode, torch.no_grad():
            flat = [e.clone() if isinstance(e, torch.Tensor) else e for e in examples]
            made: dict[int, torch.Tensor] = {}
            template = _faked(spec.template, fake_mode, made)
            state = {name: made[id(t)] for name, t in spec.template.state_tensors().items() if id(t) in made}
            versions = [t._version if isinstance(t, torch.Tensor) else None for t in flat]
            state_versions = {name: t._version for name, t in state.items()}
            this, args, kwargs = spec.bind(tuple(flat), strict=False, template=template)
            outputs = spec.flatten(forward(this, *args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - data-dependent code and the like: found at the first real call instead
        return exc
    written = frozenset(i for i, t in enumerate(flat) if isinstance(t, torch.Tensor) and t._version != versions[i])
    state_written = tuple(name for name, t in state.items() if t._version != state_versions[name])
    return Effects(written, state_written, _aliases(outputs, flat))


def with_size_hints(examples: Sequence[Any]) -> list[Any] | None:
    """Fake copies of `examples` in a fresh fake mode with every symbolic size and stride replaced
    by its hint (the size of the example dynamo traced with); None when a size has no hint. A
    kernel that cannot run on symbolic sizes (e.g. `expand` inside `addcmul`) usually runs on
    these, and what it writes and aliases does not depend on the sizes."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import guarding_hint_or_throw

    def concrete(value: Any) -> Any:
        return int(guarding_hint_or_throw(value)) if isinstance(value, torch.SymInt) else value

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    out: list[Any] = []
    try:
        for e in examples:
            if isinstance(e, torch.Tensor):
                size, stride = [concrete(s) for s in e.shape], [concrete(s) for s in e.stride()]
                with mode:
                    out.append(torch.empty_strided(size, stride, dtype=e.dtype, device=e.device))
            else:
                out.append(concrete(e))
    except Exception:  # noqa: BLE001 - an unbacked size has no hint
        return None
    return out


def fake_outputs(original: Callable[..., Any], spec: CallSpec, inputs: Sequence[Any]) -> list[torch.Tensor]:
    """The op's output metadata: the original forward on fake values, state tensors made fake."""
    fake_mode = _fake_mode_of(inputs)
    template = _faked(spec.template, fake_mode) if fake_mode is not None else None
    this, args, kwargs = spec.bind(tuple(inputs), strict=False, template=template)
    return [o.clone() for o in spec.flatten(original(this, *args, **kwargs))]


def _first_call(entry: OpaqueSite, flat: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The kernel's first real call where compile time could not tell what it does: on copies of
    the inputs it is not known to write, so an undeclared write or an aliased output changes
    nothing, and the site falls back to its original forward."""
    state = entry.spec.template.state_tensors()
    state_versions = {name: t._version for name, t in state.items()}
    copies = [t if i in entry.written else t.detach().clone() for i, t in enumerate(flat)]
    versions = [t._version for t in copies]
    outputs = entry.run(entry.kernel_forward, copies)
    wrote = [i for i, t in enumerate(copies) if i not in entry.written and t._version != versions[i]]
    state_wrote = [name for name, t in state.items() if t._version != state_versions[name]]
    aliased = [(j, i) for j, i in _aliases(outputs, copies) if i not in entry.written]
    if wrote:
        entry.fallback = f"the kernel writes its input {wrote[0]} in place, which the opaque op did not declare"
    elif aliased:
        entry.fallback = f"the kernel's output {aliased[0][0]} is a view of its input {aliased[0][1]}"
    elif state_wrote and entry.needs_grad:
        entry.fallback = f"the kernel writes {state_wrote[0]} and its backward would run it again"
    entry.checked = True
    if entry.fallback is None:
        return outputs
    logger.warning("opaque kernel %s runs its original forward from now on: %s",
                   getattr(entry.kernel_forward, "__qualname__", "?"), entry.fallback)
    return entry.run(entry.original_forward, flat)


def _call(site: str, flat: list[torch.Tensor]) -> list[torch.Tensor]:
    entry = _sites[site]
    with torch.no_grad():
        if entry.fallback is None and not entry.checked:
            outputs = _first_call(entry, flat)
        else:
            outputs = entry.run(entry.forward, flat)
    return _fresh(outputs, flat)


@torch.library.custom_op("kernel_fx::opaque_kernel", mutates_args=())
def opaque_kernel(site: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return _call(site, list(inputs))


@opaque_kernel.register_fake
def _(site: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    entry = _sites[site]
    return fake_outputs(entry.original_forward, entry.spec, inputs)


_writing_ops: dict[int, Any] = {}


def writing_op(outputs: int) -> Any:
    """The opaque op of a kernel that writes the tensors in `written` in place (never under
    autograd), returning `outputs` tensors. One op per count: auto-functionalization takes a
    mutating op's tensors returned one by one, not as a list."""
    if outputs not in _writing_ops:
        returns = "()" if outputs == 0 else "Tensor" if outputs == 1 else f"({', '.join(['Tensor'] * outputs)})"

        def run(site: str, inputs: list[torch.Tensor], written: list[torch.Tensor]) -> Any:
            return _returned(_call(site, _sites[site].flat(inputs, written)))

        def fake(site: str, inputs: list[torch.Tensor], written: list[torch.Tensor]) -> Any:
            entry = _sites[site]
            return _returned(fake_outputs(entry.original_forward, entry.spec, entry.flat(inputs, written)))

        op = torch.library.custom_op(f"kernel_fx::opaque_kernel_writing{outputs}", run, mutates_args=("written",),
                                     schema=f"(str site, Tensor[] inputs, Tensor(a!)[] written) -> {returns}")
        op.register_fake(fake)
        _writing_ops[outputs] = getattr(torch.ops.kernel_fx, f"opaque_kernel_writing{outputs}").default
    return _writing_ops[outputs]


def _returned(outputs: list[torch.Tensor]) -> Any:
    return None if not outputs else outputs[0] if len(outputs) == 1 else tuple(outputs)


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
    entry = _sites[site]  # a kernel that writes anything never gets here (prepare, _first_call)
    with _autograd_back_on(), torch.enable_grad():
        leaves = [t.detach().requires_grad_(t.is_floating_point() or t.is_complex()) for t in inputs]
        outputs = entry.run(entry.forward, leaves)
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
