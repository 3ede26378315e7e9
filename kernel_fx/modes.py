"""`Mode`: what a kernel mapping entry is for, and the order entries are tried in.

>>> from kernel_fx import Mode
>>> Mode.INFERENCE | Mode.TORCH_COMPILE
<Mode.INFERENCE|TORCH_COMPILE: 12>
>>> [str(m) for m in fallback_chain(Mode.TRAINING)]
['TRAINING', 'TRAINING|TORCH_COMPILE', 'FALLBACK']
"""

from __future__ import annotations

from enum import Flag, auto

from .errors import MappingError


class Mode(Flag):
    """Kernel mode flags, compatible with the Hugging Face `kernels` package.

    `INFERENCE` and `TRAINING` exclude each other; `TORCH_COMPILE` combines with either;
    `FALLBACK` stands alone and only marks mapping entries used when nothing more specific is.
    """

    _NONE = 0
    FALLBACK = auto()
    TRAINING = auto()
    INFERENCE = auto()
    TORCH_COMPILE = auto()

    def __or__(self, other: Mode) -> Mode:
        union = super().__or__(other)
        _check_combination(union)
        return union

    def __str__(self) -> str:
        return "|".join(m.name for m in Mode if m.name != "_NONE" and m in self) or "NONE"


def _check_combination(mode: Mode) -> None:
    if Mode.INFERENCE in mode and Mode.TRAINING in mode:
        raise MappingError(f"Mode {mode!s} is invalid: Mode.INFERENCE and Mode.TRAINING are mutually exclusive.")
    if Mode.FALLBACK in mode and mode != Mode.FALLBACK:
        raise MappingError(f"Mode {mode!s} is invalid: Mode.FALLBACK cannot be combined with other modes.")


# Which mapping entries a kernelize mode may use, most specific first (the anchor's chain).
_FALLBACK_CHAINS: dict[Mode, tuple[Mode, ...]] = {
    Mode.INFERENCE: (
        Mode.INFERENCE,
        Mode.INFERENCE | Mode.TORCH_COMPILE,
        Mode.TRAINING,
        Mode.TRAINING | Mode.TORCH_COMPILE,
        Mode.FALLBACK,
    ),
    Mode.TRAINING: (Mode.TRAINING, Mode.TRAINING | Mode.TORCH_COMPILE, Mode.FALLBACK),
    Mode.INFERENCE | Mode.TORCH_COMPILE: (
        Mode.INFERENCE | Mode.TORCH_COMPILE,
        Mode.TRAINING | Mode.TORCH_COMPILE,
        Mode.FALLBACK,
    ),
    Mode.TRAINING | Mode.TORCH_COMPILE: (Mode.TRAINING | Mode.TORCH_COMPILE, Mode.FALLBACK),
}

MAPPING_MODES = frozenset(m for chain in _FALLBACK_CHAINS.values() for m in chain)


def check_kernelize_mode(mode: Mode) -> Mode:
    """Return `mode` if kernelize can run in it, else raise naming the allowed modes."""
    if not isinstance(mode, Mode):
        raise MappingError(f"mode={mode!r} is not a kernel_fx.Mode; use e.g. Mode.INFERENCE or Mode.TRAINING | Mode.TORCH_COMPILE.")
    if mode not in _FALLBACK_CHAINS:
        allowed = ", ".join(str(m) for m in _FALLBACK_CHAINS)
        # The first clause is `kernels`' wording, which its users match on; ours follows it.
        why = ("Mode.FALLBACK can only be used to register kernel mappings" if mode is Mode.FALLBACK
               else "kernelize mode must contain Mode.INFERENCE or Mode.TRAINING")
        raise MappingError(f"{why}: kernelize cannot run in mode {mode!s}; allowed modes are: {allowed}.")
    return mode


def check_mapping_mode(mode: object) -> Mode:
    """Return `mode` if a mapping entry may be registered under it, else raise."""
    if not isinstance(mode, Mode) or mode not in MAPPING_MODES:
        allowed = ", ".join(sorted(str(m) for m in MAPPING_MODES))
        raise MappingError(f"Mapping mode {mode!r} is not allowed; allowed modes are: {allowed}.")
    return mode


def fallback_chain(mode: Mode) -> tuple[Mode, ...]:
    """The mapping modes tried, in order, when kernelizing in `mode`."""
    return _FALLBACK_CHAINS[check_kernelize_mode(mode)]
