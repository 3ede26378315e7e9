"""The switches that turn kernel_fx off for a process, read strictly and at call time.

| variable | values |
|---|---|
| `KERNEL_FX_DISABLE` | `1`, `true`, `yes`, `on`: disabled; `0`, `false`, `no`, `off` or empty: not |
| `DISABLE_KERNEL_MAPPING` | the `kernels` package's switch, read as `kernels` reads it (`bool(int(value))`; empty: not set) |

Either one set makes every path keep (and `kernelize` restore) every original forward. A value
that is none of these is an error naming it, never a silent guess:

>>> parse_switch("KERNEL_FX_DISABLE", "Off"), parse_switch("KERNEL_FX_DISABLE", "yes")
(False, True)
>>> parse_switch("KERNEL_FX_DISABLE", "maybe")
Traceback (most recent call last):
...
kernel_fx.errors.SettingError: KERNEL_FX_DISABLE='maybe' is not a switch value; use 1, true, yes or on to disable kernel_fx, ...
>>> parse_switch("DISABLE_KERNEL_MAPPING", "2"), parse_switch("DISABLE_KERNEL_MAPPING", "0")
(True, False)
"""

from __future__ import annotations

import os

from .errors import SettingError

_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off", "")


def parse_switch(name: str, value: str) -> bool:
    """Whether `value` of switch `name` means "disabled"; raises `SettingError` for anything else."""
    if name == "DISABLE_KERNEL_MAPPING":
        if not value.strip():
            return False  # `kernels` would fail on int(""); an empty value means "not set"
        try:
            return bool(int(value))  # what `kernels` 0.19 does (layer/globals.py)
        except ValueError:
            raise SettingError(
                f"DISABLE_KERNEL_MAPPING={value!r} is not an integer; the `kernels` package reads it with int(): "
                "use 1 to disable kernel mappings and 0 to enable them."
            ) from None
    text = value.strip().lower()
    if text in _ON:
        return True
    if text in _OFF:
        return False
    raise SettingError(
        f"{name}={value!r} is not a switch value; use {', '.join(_ON[:-1])} or {_ON[-1]} to disable kernel_fx, "
        f"and {', '.join(_OFF[:-2])}, {_OFF[-2]} or an empty value to enable it."
    )


def disabled_by() -> str | None:
    """The variable that disables kernel_fx now (`KERNEL_FX_DISABLE` first), or None."""
    for name in ("KERNEL_FX_DISABLE", "DISABLE_KERNEL_MAPPING"):
        value = os.environ.get(name)
        if value is not None and parse_switch(name, value):
            return name
    return None
