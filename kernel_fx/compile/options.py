"""The hubkernels backend's options, validated: `torch.compile(..., options={...})` or `HubKernelsBackend(...)`.

>>> Options().updated({"inner": "eager", "mode": "inference"}).inner
'eager'
>>> Options().updated({"innr": "eager"})
Traceback (most recent call last):
...
kernel_fx.compile.options.BackendOptionError: Unknown hubkernels option 'innr'. Known options are: autotune, checks, device, inner, mode, use_fallback, verify.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..checks import ordered
from ..checks.verification import Verify
from ..devices import Device
from ..errors import KernelFxError
from ..modes import Mode, check_kernelize_mode

KNOWN_OPTIONS = ("autotune", "checks", "device", "inner", "mode", "use_fallback", "verify")


class BackendOptionError(KernelFxError, ValueError):
    """An option given to the hubkernels backend is unknown or has a wrong value."""


@dataclass(frozen=True)
class Options:
    """The backend's settings, validated."""

    inner: str | Callable[..., Any] = "inductor"
    mode: Mode | None = None
    device: str | None = None
    use_fallback: bool = True
    autotune: bool = False
    verify: Any = None  # True, a dict of tolerances or a kernel_fx.Verify; kept as a Verify or None
    checks: tuple = ()  # kernel_fx.checks.Check objects added to the pass's own (and to trace-time choices)

    def __post_init__(self) -> None:
        if isinstance(self.inner, str):
            _check_inner(self.inner)
        elif not callable(self.inner):
            raise BackendOptionError(f"hubkernels option inner={self.inner!r} must be a backend name such as 'inductor' or a callable.")
        if self.mode is not None:
            object.__setattr__(self, "mode", _parse_mode(self.mode))
        if self.device is not None:
            object.__setattr__(self, "device", _parse_device(self.device))
        if not isinstance(self.use_fallback, bool):
            raise BackendOptionError(f"hubkernels option use_fallback={self.use_fallback!r} must be True or False.")
        if not isinstance(self.autotune, bool):
            raise BackendOptionError(f"hubkernels option autotune={self.autotune!r} must be True or False.")
        try:
            object.__setattr__(self, "checks", ordered(self.checks))
        except KernelFxError as exc:
            raise BackendOptionError(f"hubkernels option checks: {exc}") from None
        try:
            object.__setattr__(self, "verify", Verify.of(self.verify, "hubkernels option verify"))
        except KernelFxError as exc:
            raise BackendOptionError(str(exc)) from None

    def updated(self, options: Mapping[str, Any] | None) -> Options:
        """These options with `options` (a torch.compile `options=` dict) applied on top."""
        if not options:
            return self
        if not isinstance(options, Mapping):
            raise BackendOptionError(f"hubkernels options must be a dict, got {options!r}.")
        unknown = sorted(set(options) - set(KNOWN_OPTIONS))
        if unknown:
            raise BackendOptionError(
                f"Unknown hubkernels option {', '.join(map(repr, unknown))}. Known options are: {', '.join(KNOWN_OPTIONS)}."
            )
        return replace(self, **options)


_BUILTIN_INNERS = frozenset({"eager", "aot_eager", "inductor"})


def _check_inner(name: str) -> None:
    if name in _BUILTIN_INNERS:
        return
    from torch._dynamo import list_backends

    known = sorted({*list_backends(exclude_tags=()), *_BUILTIN_INNERS} - {"hubkernels"})
    if name not in known:
        raise BackendOptionError(f"hubkernels option inner={name!r} is not a registered backend. Known backends are: {', '.join(known)}.")


def _parse_mode(mode: Any) -> Mode:
    if isinstance(mode, str):
        names = {m.name.lower(): m for m in (Mode.INFERENCE, Mode.TRAINING)}
        if mode.lower() not in names:
            raise BackendOptionError(f"hubkernels option mode={mode!r} is not a mode; use 'inference', 'training' or a kernel_fx.Mode.")
        mode = names[mode.lower()]
    if not isinstance(mode, Mode):
        raise BackendOptionError(f"hubkernels option mode={mode!r} must be a kernel_fx.Mode such as Mode.INFERENCE.")
    return check_kernelize_mode(mode | Mode.TORCH_COMPILE)


def _parse_device(device: Any) -> str:
    try:
        return Device.parse(device).type
    except KernelFxError as exc:
        raise BackendOptionError(f"hubkernels option device={device!r}: {exc}") from exc
