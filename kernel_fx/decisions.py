"""The decision vocabulary: what runs at a site (`Outcome`), why not a kernel (`Reason`,
`Rejected`), one `Decision` per site and condition, and the one rule on when a fallback is an error.

>>> r = Rejected(Reason.NO_MAPPING, "no kernel mapped for layer 'SiluAndMul'")
>>> str(r), allowed_fallback(r)
("no mapping: no kernel mapped for layer 'SiluAndMul'", True)
>>> allowed_fallback(Rejected(Reason.LOAD_FAILED, "404"))
False
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
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
    # compile-only
    AMBIGUOUS_BINDING = "ambiguous binding"
    PARTIAL_REGION = "partial region"
    NOT_TRACEABLE = "not traceable"
    UNKNOWN_MODULE = "module not resolved"
    ENCLOSED = "inside a substituted call"
    SLOWER_THAN_ORIGINAL = "slower than original"  # autotune=True timed both


@dataclass(frozen=True)
class Rejected:
    """A typed "no": the reason and the detail that explains it."""

    reason: Reason
    detail: str

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"


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

    @property
    def uses_kernel(self) -> bool:
        return self.outcome is not Outcome.ORIGINAL

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = self.outcome.value
        data["rejected"] = None if self.rejected is None else {"reason": self.rejected.reason.value, "detail": self.rejected.detail}
        return data


# Reasons that are never an error, even with use_fallback=False: nothing was asked of the site
# (no mapping, filtered out, disabled), the user asked for the original (autotune judged it
# slower), or a kernel runs anyway (the enclosing call's).
NEVER_AN_ERROR = frozenset({Reason.NO_MAPPING, Reason.FILTERED, Reason.DISABLED, Reason.SLOWER_THAN_ORIGINAL, Reason.ENCLOSED})

DISABLED = Rejected(Reason.DISABLED, "KERNEL_FX_DISABLE is set")
FILTERED = Rejected(Reason.FILTERED, "filter_fn returned False")


def allowed_fallback(rejected: Rejected | None) -> bool:
    """Whether keeping the original forward for `rejected` is fine under `use_fallback=False`."""
    return rejected is None or rejected.reason in NEVER_AN_ERROR


def raise_unless_allowed(rejected: Rejected | None, where: str, hint: str) -> None:
    """The one `use_fallback=False` rule of every path: raise `KernelizeError` naming the site
    (`where`), the reason, and how to keep the original (`hint`), unless the fallback is allowed."""
    if not allowed_fallback(rejected):
        raise KernelizeError(f"Cannot kernelize {where}: {rejected}. {hint}")
