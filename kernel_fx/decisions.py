"""The decision vocabulary: what runs at a site (`Outcome`), why not a kernel (`Reason`,
`Rejected`), one `Decision` per site and condition, and the one rule on when a fallback is an error.

Under `use_fallback=False` every fallback is an error except the reasons in `NEVER_AN_ERROR`
(nothing to do, or the user's own choice); a `KernelizeFallback` flag allows the cases it names,
as in the Hugging Face `kernels` package:

>>> r = Rejected(Reason.NO_MAPPING, "no kernel mapped for layer 'SiluAndMul'")
>>> str(r), allowed_fallback(r), allowed_fallback(r, KernelizeFallback.DEFAULT)
("no mapping: no kernel mapped for layer 'SiluAndMul'", False, True)
>>> allowed_fallback(Rejected(Reason.LOAD_FAILED, "404"), KernelizeFallback.DEFAULT)
False
>>> allowed_fallback(FILTERED)
True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from enum import Enum, Flag, auto
from typing import Any

from .errors import KernelizeError


class Outcome(str, Enum):
    """What runs at a site."""

    KERNEL = "kernel"
    OPAQUE_KERNEL = "opaque kernel"
    ORIGINAL = "original"


class Reason(str, Enum):
    """Why a site does not run a kernel (in some or all of its conditions)."""

    NO_MAPPING = "no mapping"
    NO_DEVICE_ENTRY = "no entry for device"
    CAPABILITY_OUT_OF_RANGE = "capability out of range"
    CAPABILITY_UNAVAILABLE = "capability unavailable"
    NO_MODE_ENTRY = "no entry for mode"
    TRAINING_FALLBACK = "training fallback"
    NOT_COMPILABLE = "not torch.compile-able"
    LOAD_FAILED = "could not load"
    VALIDATION_FAILED = "validation failed"
    FILTERED = "filtered out"
    DISABLED = "disabled"
    OVERRIDES_FORWARD = "overrides forward"  # a subclass of a marked class with a forward of its own
    WRONG_OUTPUT = "wrong output"  # the kernel's output shape, dtype or device is not the original's
    NUMERICALLY_DIFFERENT = "numerically different"  # verify=True measured it outside the tolerance
    DTENSOR = "DTensor inputs"  # the kernel cannot run on these DTensor placements (kernel_fx.dtensor)
    # compile-only
    AMBIGUOUS_BINDING = "ambiguous binding"
    PARTIAL_REGION = "partial region"
    NOT_TRACEABLE = "not traceable"
    UNKNOWN_MODULE = "module not resolved"
    ENCLOSED = "inside a substituted call"
    SLOWER_THAN_ORIGINAL = "slower than original"  # autotune=True timed both
    # the opaque op (compile/opaque.py) cannot express what the kernel does
    OPAQUE_ALIASING = "aliased output"  # an output is a view of an input that is written later
    OPAQUE_SIDE_EFFECT = "side effect under autograd"  # the opaque backward would run the writes twice
    OPAQUE_NO_METADATA = "no output metadata"  # the original could not run on fake tensors
    OPAQUE_UNKNOWN_EFFECTS = "unknown effects"  # the kernel's writes not found on fakes, and the original writes
    REFUSED_BY_CHECK = "refused by a check"  # a check passed with checks=... (or one that raised) said no


@dataclass(frozen=True)
class Rejected:
    """A typed "no".

    Attributes:
        reason: why, as a `Reason` (what reports count and `use_fallback=False` judges).
        detail: the sentence that explains it for this site.
        check: the name of the check that made it (None: the planner or a path's own rule).
        exception: the exception behind it, when one was raised (a failed load, a check that
            raised); kept for debugging, not compared.
    """

    reason: Reason
    detail: str
    check: str | None = field(default=None, compare=False)
    exception: BaseException | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"


@dataclass(frozen=True)
class Measured:
    """How far a kernel's output was from the original's, measured by `verify=True` on one input
    signature: `max_abs` is the largest |kernel - reference|, `worst` the largest
    |kernel - reference| / (atol + rtol * |reference|), so the kernel is within tolerance when
    `worst` <= 1. `reference` names the dtype the original ran in (float64 where it could).

    >>> m = Measured(2.4e-07, 0.02, "float64", 1e-05, 1e-05, "float32[2, 8]")
    >>> m.within, str(m)
    (True, 'max |err| 2.4e-07 vs original in float64 (0.02x tolerance rtol=1e-05 atol=1e-05) for inputs float32[2, 8]')
    """

    max_abs: float
    worst: float
    reference: str
    rtol: float
    atol: float
    inputs: str = ""

    @property
    def within(self) -> bool:
        return self.worst <= 1.0

    def short(self) -> str:
        """The figures for a report table cell: `2.4e-07 (0.02x tol)`."""
        return f"{self.max_abs:.2g} ({self.worst:.2g}x tol)"

    def __str__(self) -> str:
        text = (f"max |err| {self.max_abs:.2g} vs original in {self.reference} "
                f"({self.worst:.2g}x tolerance rtol={self.rtol:g} atol={self.atol:g})")
        return text + (f" for inputs {self.inputs}" if self.inputs else "")


@dataclass(frozen=True)
class Decision:
    """One site's outcome. `mode` names the conditions it covers, e.g. "INFERENCE" or "TRAINING"."""

    path: str
    layer_name: str
    module_class: str
    device: str
    mode: str
    outcome: Outcome
    repository: str | None = None
    variant: str | None = None
    rejected: Rejected | None = None
    unpinned: bool = False
    call_index: int | None = None
    path_kind: str = "eager"
    measured: Measured | None = None  # verify=True: the kernel's measured error on the site's inputs
    figures: tuple[tuple[str, Any], ...] = ()  # (check name, what it measured) for the checks that measured

    @property
    def uses_kernel(self) -> bool:
        return self.outcome is not Outcome.ORIGINAL

    def as_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}  # not asdict: a rejection's exception is no data
        data["measured"] = None if self.measured is None else asdict(self.measured)
        data["outcome"] = self.outcome.value
        data["rejected"] = None if self.rejected is None else {"reason": self.rejected.reason.value, "detail": self.rejected.detail,
                                                               "check": self.rejected.check}
        data["figures"] = {name: str(value) for name, value in self.figures}
        return data


class KernelizeFallback(Flag):
    """Which fallbacks `kernelize(..., use_fallback=...)` allows; the flags of the `kernels` package.

    `NONE` is `use_fallback=False`; `DEFAULT` allows a missing mapping, device entry, capability
    range or mode but raises when a kernel cannot be loaded; `ALL` adds `CANNOT_LOAD` (a load or
    validation failure). kernel_fx's `use_fallback=True` allows every fallback (`ALL`).
    """

    NONE = 0
    NO_LAYER = auto()
    NO_DEVICE = auto()
    NO_COMPATIBLE_PROPERTIES = auto()
    NO_COMPATIBLE_MODE = auto()
    CANNOT_LOAD = auto()

    DEFAULT = NO_LAYER | NO_DEVICE | NO_COMPATIBLE_PROPERTIES | NO_COMPATIBLE_MODE
    ALL = DEFAULT | CANNOT_LOAD


# Which `KernelizeFallback` case each reason is. Compile-only reasons (ambiguous binding, ...) are
# none of them: no flag allows them, only `use_fallback=True`.
FALLBACK_CASE = {
    Reason.NO_MAPPING: KernelizeFallback.NO_LAYER,
    Reason.NO_DEVICE_ENTRY: KernelizeFallback.NO_DEVICE,
    Reason.CAPABILITY_OUT_OF_RANGE: KernelizeFallback.NO_COMPATIBLE_PROPERTIES,
    Reason.CAPABILITY_UNAVAILABLE: KernelizeFallback.NO_COMPATIBLE_PROPERTIES,
    Reason.NO_MODE_ENTRY: KernelizeFallback.NO_COMPATIBLE_MODE,
    Reason.TRAINING_FALLBACK: KernelizeFallback.NO_COMPATIBLE_MODE,
    Reason.NOT_COMPILABLE: KernelizeFallback.NO_COMPATIBLE_MODE,
    Reason.LOAD_FAILED: KernelizeFallback.CANNOT_LOAD,
    Reason.VALIDATION_FAILED: KernelizeFallback.CANNOT_LOAD,
}

# Reasons that are never an error, even with use_fallback=False: the user filtered the site out
# (filter_fn, a layer's kernel_condition) or disabled kernel_fx, asked for the original (autotune
# judged the kernel slower), or a kernel runs anyway (the enclosing call's). A marked layer with no
# mapping is an error, as in `kernels` ("No layer mapping for `X`").
# A subclass that overrides a marked forward was never the marked layer: keeping its forward is no fallback.
NEVER_AN_ERROR = frozenset({Reason.FILTERED, Reason.DISABLED, Reason.SLOWER_THAN_ORIGINAL, Reason.ENCLOSED,
                            Reason.OVERRIDES_FORWARD})

DISABLED = Rejected(Reason.DISABLED, "KERNEL_FX_DISABLE or DISABLE_KERNEL_MAPPING is set")
FILTERED = Rejected(Reason.FILTERED, "filter_fn returned False")
CONDITION_FALSE = Rejected(Reason.FILTERED, "the layer's kernel_condition returned False for this module")


def allowed_fallback(rejected: Rejected | None, allowed: KernelizeFallback = KernelizeFallback.NONE) -> bool:
    """Whether keeping the original forward for `rejected` is fine when only `allowed` fallbacks are."""
    if rejected is None or rejected.reason in NEVER_AN_ERROR:
        return True
    case = FALLBACK_CASE.get(rejected.reason)
    return case is not None and case in allowed


def kernels_phrase(rejected: Rejected, layer_name: str, repository: str | None = None) -> str:
    """The words the Hugging Face `kernels` package uses for `rejected` (its users match on them in
    `pytest.raises(match=...)` and log filters), or "" where it has none.

    >>> kernels_phrase(Rejected(Reason.NO_MAPPING, "no kernel mapped for layer 'Norm'"), "Norm")
    'No layer mapping for `Norm`'
    >>> kernels_phrase(Rejected(Reason.NOT_COMPILABLE, "kernel has can_torch_compile = False"), "Norm", "org/norm@v1")
    'Function/layer from repo org/norm@v1 does not support torch.compile'
    """
    repo = f"repo {repository}" if repository else "its repo"
    phrases = {
        Reason.NO_MAPPING: f"No layer mapping for `{layer_name}`",
        Reason.NOT_COMPILABLE: f"Function/layer from {repo} does not support torch.compile",
        Reason.TRAINING_FALLBACK: f"Function/layer from {repo} does not support backward",
        Reason.VALIDATION_FAILED: f"Kernel layer for `{layer_name}` from {repo} does not match the layer it replaces",
    }
    return phrases.get(rejected.reason, "")


def raise_unless_allowed(rejected: Rejected | None, where: str, hint: str, allowed: KernelizeFallback = KernelizeFallback.NONE,
                         phrase: str = "") -> None:
    """The one `use_fallback` rule of every path: raise `KernelizeError` naming the site (`where`),
    the reason, and how to keep the original (`hint`), unless `allowed` covers the fallback.
    `phrase` (see `kernels_phrase`) goes first, for code that matches on `kernels`' messages."""
    if not allowed_fallback(rejected, allowed):
        raise KernelizeError(f"{phrase + ': ' if phrase else ''}Cannot kernelize {where}: {rejected}. {hint}")
