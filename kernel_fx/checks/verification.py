"""Checking a kernel's output against the forward it replaces, on real calls: the output check
(shape, dtype, device and structure, always on) and verified substitution (`verify=True`:
numbers, against the original run in float64 where it can be).

Both paths use these: eager `kernelize` on the first call of each input signature (see
`checks/calls.py`), the compiled pass per distinct call (`compile/output_check.py`,
`compile/verify.py`).

>>> import torch
>>> Verify.of(True).tolerance(torch.float32)
Tolerance(rtol=1e-05, atol=1e-05)
>>> Verify.of({"bfloat16": (0.05, 0.01)}).tolerance(torch.bfloat16)
Tolerance(rtol=0.05, atol=0.01)
>>> output_problem(torch.empty(2, 4), torch.empty(1, 4))
'output 0 has shape (1, 4), the original (2, 4)'
>>> m = measure(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0], dtype=torch.float64), Verify(), "float32[2]")
>>> m.max_abs, m.within
(0.0, True)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils import _pytree as pytree

from ..decisions import Measured
from ..errors import MappingError


class Tolerance(NamedTuple):
    """Allowed |kernel - reference| <= atol + rtol * |reference|, elementwise."""

    rtol: float
    atol: float


# Per dtype of the original's output. The reference is the original in float64 where it runs so,
# so these hold the original's own rounding too: torch.testing's defaults, loosened for kernels
# that legitimately reorder sums (float32), and for half types to about two units in the last place.
DEFAULT_TOLERANCES: Mapping[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(1e-7, 1e-7),
    torch.float32: Tolerance(1e-5, 1e-5),
    torch.float16: Tolerance(1e-3, 1e-3),
    torch.bfloat16: Tolerance(1.6e-2, 1e-2),
}
_EXACT = Tolerance(0.0, 0.0)  # integer and boolean outputs must match exactly


@dataclass(frozen=True)
class Verify:
    """The settings of `verify=`: tolerances per dtype (added to `DEFAULT_TOLERANCES`), and whether
    the original runs in float64 for the reference (`float64=False`: in its own dtype).

    `Verify.of(value)` reads what users pass: True, False/None, a `Verify`, or a dict of
    tolerances `{torch.float32: (rtol, atol)}` (dtype names such as "bfloat16" work too).

    >>> Verify.of({"float32": (1e-4, 1e-4)}).tolerance(torch.float32)
    Tolerance(rtol=0.0001, atol=0.0001)
    >>> Verify.of("yes")
    Traceback (most recent call last):
    ...
    kernel_fx.errors.MappingError: verify='yes' must be True, False, a dict of tolerances {dtype: (rtol, atol)} or a kernel_fx.Verify.
    """

    tolerances: Any = field(default_factory=dict)
    float64: bool = True

    def __post_init__(self) -> None:
        items = self.tolerances.items() if isinstance(self.tolerances, Mapping) else self.tolerances
        try:
            parsed = tuple(sorted(((_dtype(k), _tolerance(k, v)) for k, v in items), key=lambda kv: str(kv[0])))
        except TypeError:
            raise MappingError(f"verify tolerances {self.tolerances!r} must be a dict {{dtype: (rtol, atol)}}.") from None
        object.__setattr__(self, "tolerances", parsed)  # hashable, so a Verify can key caches
        if not isinstance(self.float64, bool):
            raise MappingError(f"Verify(float64={self.float64!r}) must be True or False.")

    @classmethod
    def of(cls, value: object, name: str = "verify") -> Verify | None:
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, Verify):
            return value
        if isinstance(value, Mapping):
            return cls(dict(value))
        raise MappingError(f"{name}={value!r} must be True, False, a dict of tolerances {{dtype: (rtol, atol)}} or a kernel_fx.Verify.")

    def tolerance(self, dtype: torch.dtype) -> Tolerance:
        for key, tol in self.tolerances:
            if key == dtype:
                return tol
        if dtype.is_floating_point or dtype.is_complex:
            return DEFAULT_TOLERANCES.get(dtype, DEFAULT_TOLERANCES[torch.float16])
        return _EXACT


def _dtype(key: object) -> torch.dtype:
    if isinstance(key, torch.dtype):
        return key
    found = getattr(torch, key, None) if isinstance(key, str) else None
    if not isinstance(found, torch.dtype):
        raise MappingError(f"verify tolerance key {key!r} is not a dtype; use e.g. torch.float32 or 'bfloat16'.")
    return found


def _tolerance(key: object, value: object) -> Tolerance:
    if isinstance(value, Mapping):
        value = (value.get("rtol"), value.get("atol"))
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in value)):
        raise MappingError(f"verify tolerance for {key!r} is {value!r}; use (rtol, atol), two numbers >= 0.")
    return Tolerance(float(value[0]), float(value[1]))


# -- input signatures -----------------------------------------------------------------------------


def _leaf_key(value: Any) -> Any:
    if type(value) is torch.Tensor or type(value) is nn.Parameter:
        return (value.shape, value.dtype, value.device)
    if isinstance(value, torch.Tensor):
        raise _Unchecked  # a tensor subclass (DTensor, ...): its own rules decide (see kernel_fx.dtensor)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return tuple(_leaf_key(v) for v in value)
    if isinstance(value, (torch.dtype, torch.device)):
        return value
    # Any other object (a KV cache, ...) may be written by the original: running it beside the
    # kernel would write it twice (or store fake tensors in it). Such calls are not checked.
    raise _Unchecked


class _Unchecked(Exception):
    pass


def call_signature(args: tuple, kwargs: dict) -> tuple | None:
    """What a check's verdict depends on in one call: tensor shapes, dtypes and devices, plain
    values; None for calls that are not checked (tensor subclasses, and other objects, which the
    original may write to, such as a KV cache)."""
    try:
        return (tuple(_leaf_key(a) for a in args), tuple((k, _leaf_key(v)) for k, v in kwargs.items()) if kwargs else ())
    except _Unchecked:
        return None


def describe(args: tuple, kwargs: dict) -> str:
    """The call's tensor arguments, `float32[2, 8]`, for reports."""
    leaves = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    return ", ".join(f"{str(t.dtype).removeprefix('torch.')}[{', '.join(map(str, t.shape))}]" for t in leaves) or "-"


# -- running the original beside the kernel ---------------------------------------------------------

# Set while the original runs as a reference: marked layers inside it run their originals too.
_REFERENCE: ContextVar[bool] = ContextVar("kernel_fx_reference", default=False)


def in_reference_run() -> bool:
    """Whether the original of some layer is running as a reference (inner kernels stay out)."""
    return _REFERENCE.get()


@contextlib.contextmanager
def _reference() -> Iterator[None]:
    token = _REFERENCE.set(True)
    try:
        yield
    finally:
        _REFERENCE.reset(token)


class _Call(nn.Module):
    """Runs `fn(module, ...)` so `torch.func.functional_call` can swap the module's tensors."""

    def __init__(self, module: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.module = module
        self._fn = fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(self.module, *args, **kwargs)


def _run_on_copies(original: Callable[..., Any], module: nn.Module, args: tuple, kwargs: dict,
                   cast: Callable[[torch.Tensor], torch.Tensor], fork_rng: bool = True) -> Any:
    """The original on copies of the arguments and of the module's tensors (`cast` makes them):
    writes in place land in the copies, and no random numbers are drawn from the model's streams."""
    def copy(value: Any) -> Any:
        return cast(value.detach()) if isinstance(value, torch.Tensor) else value

    tensors = {f"module.{n}": copy(t) for n, t in
               [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]}
    args, kwargs = pytree.tree_map(copy, (args, kwargs))
    devices = sorted({t.device.index or 0 for t in tensors.values() if t.device.type == "cuda"})
    rng = torch.random.fork_rng(devices=devices) if fork_rng else contextlib.nullcontext()
    with _reference(), torch.no_grad(), rng:
        return torch.func.functional_call(_Call(module, original), tensors, args, kwargs, tie_weights=False, strict=False)


def expected_output(original: Callable[..., Any], module: nn.Module, args: tuple, kwargs: dict) -> Any:
    """What the original returns for these arguments, as fake tensors (shapes, dtypes, devices; no
    compute, nothing written); from a real run on copies when it cannot run on fake tensors
    (e.g. it reads a value with `.item()`). None when it fails both ways."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    try:
        with FakeTensorMode(allow_non_fake_inputs=True):  # detach() inside it gives fake copies
            return _run_on_copies(original, module, args, kwargs, lambda t: t, fork_rng=False)
    except Exception:  # noqa: BLE001 - a fake run is an optimization; the real one decides
        pass
    try:
        return _run_on_copies(original, module, args, kwargs, lambda t: t.clone())
    except Exception:  # noqa: BLE001 - the original itself fails: nothing to check against
        return None


def fake_output(fn: Callable[..., Any], module: nn.Module, args: tuple, kwargs: dict) -> Any:
    """What `fn(module, *args, **kwargs)` returns, computed on fakes in a fake mode of its own:
    fake copies of the arguments (a symbolic size, as while dynamo traces, taken at its hint: the
    check must add no guard to dynamo's shapes) and of the module's tensors; real tensors inside
    other arguments (a copied KV cache) are read as fakes too. Nothing is computed or written.
    None when a size has no hint."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import guarding_hint_or_throw

    mode = FakeTensorMode(allow_non_fake_inputs=True)

    def concrete(size: Any) -> int:
        return int(guarding_hint_or_throw(size)) if isinstance(size, torch.SymInt) else int(size)

    def fake(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        with mode:
            return torch.empty_strided([concrete(s) for s in value.shape], [concrete(s) for s in value.stride()],
                                       dtype=value.dtype, device=value.device)

    try:
        args, kwargs = pytree.tree_map(fake, (args, kwargs))
    except Exception:  # noqa: BLE001 - an unbacked size has no hint: nothing to compare
        return None
    tensors = {f"module.{n}": mode.from_tensor(t.detach()) for n, t in
               [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]}
    quiet = logging.getLogger("torch._subclasses.fake_tensor")  # a forward failing on fakes is an answer, not an error
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        with mode, _reference(), torch.no_grad():
            return torch.func.functional_call(_Call(module, fn), tensors, args, kwargs, tie_weights=False, strict=False)
    finally:
        quiet.setLevel(level)


def reference_output(original: Callable[..., Any], module: nn.Module, args: tuple, kwargs: dict,
                     verify: Verify) -> tuple[Any, str]:
    """The original's output on copies, in float64 where it runs so (floating tensors cast up),
    else in its own dtypes; and the name of the precision it ran in."""
    if verify.float64:
        def up(t: torch.Tensor) -> torch.Tensor:
            return t.to(torch.float64) if t.is_floating_point() else t.clone()

        try:
            return _run_on_copies(original, module, args, kwargs, up), "float64"
        except Exception:  # noqa: BLE001 - e.g. an op without a float64 kernel: compare in its dtype
            pass
    out = _run_on_copies(original, module, args, kwargs, lambda t: t.clone())
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)})
    return out, "/".join(dtypes) or "its dtype"


# -- comparing --------------------------------------------------------------------------------------


def _shape(t: torch.Tensor) -> tuple:
    return tuple(int(s) if not isinstance(s, torch.SymInt) else s for s in t.shape)


def _same_size(a: Any, b: Any) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    return bool(statically_known_true(a == b))  # symbolic sizes: equal only when provably so, no guard added


def output_problem(expected: Any, actual: Any) -> str | None:
    """Why `actual` (the kernel's output) is not shaped like `expected` (the original's): the
    structure, or an output's shape, dtype or device; None when they agree."""
    exp_leaves, exp_spec = pytree.tree_flatten(expected)
    act_leaves, act_spec = pytree.tree_flatten(actual)
    exp_tensors = [i for i, v in enumerate(exp_leaves) if isinstance(v, torch.Tensor)]
    act_tensors = [i for i, v in enumerate(act_leaves) if isinstance(v, torch.Tensor)]
    if exp_spec != act_spec or exp_tensors != act_tensors:
        return f"the kernel returned {_structure(actual)}, the original {_structure(expected)}"
    for n, i in enumerate(exp_tensors):
        e, a = exp_leaves[i], act_leaves[i]
        if len(e.shape) != len(a.shape) or not all(_same_size(x, y) for x, y in zip(e.shape, a.shape)):
            return f"output {n} has shape {_shape(a)}, the original {_shape(e)}"
        if e.dtype != a.dtype:
            return f"output {n} has dtype {a.dtype}, the original {e.dtype}"
        if e.device != a.device:
            return f"output {n} is on {a.device}, the original on {e.device}"
    return None


def _structure(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return "a tensor"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def measure(actual: Any, reference: Any, verify: Verify, inputs: str = "", reference_name: str = "float64") -> Measured:
    """The kernel's error against the reference over every output (shapes already agree); the
    tolerance reported is that of the first output's dtype, each output is judged by its own."""
    act = [t for t in pytree.tree_leaves(actual) if isinstance(t, torch.Tensor)]
    ref = [t for t in pytree.tree_leaves(reference) if isinstance(t, torch.Tensor)]
    max_abs, worst = 0.0, 0.0
    rtol, atol = verify.tolerance(act[0].dtype) if act else _EXACT
    for a, r in zip(act, ref):
        tol = verify.tolerance(a.dtype)
        a64, r64 = a.detach().to(torch.float64), r.detach().to(device=a.device, dtype=torch.float64)
        err = (a64 - r64).abs()
        both_nan = a64.isnan() & r64.isnan()
        same_inf = (a64 == r64) & r64.isinf()
        err = torch.where(both_nan | same_inf, torch.zeros_like(err), err).nan_to_num(nan=float("inf"))
        if err.numel() == 0:
            continue
        bound = tol.atol + tol.rtol * r64.abs().nan_to_num(nan=0.0, posinf=0.0)
        ratio = torch.where(err == 0, torch.zeros_like(err), err / bound)
        max_abs = max(max_abs, float(err.max()))
        worst = max(worst, float(ratio.max()))
    return Measured(max_abs, worst, reference_name, rtol, atol, inputs)
