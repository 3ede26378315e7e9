"""The few exception types kernel_fx raises.

Every message names the offending value and what is allowed, in one sentence. Where the Hugging
Face `kernels` package raises `ValueError` for the same cause, the type is a `ValueError` too, so
`except ValueError` written against `kernels` still catches it:

>>> issubclass(KernelizeError, ValueError), issubclass(MappingError, ValueError), issubclass(LayerNotFoundError, ValueError)
(True, True, True)
"""

from __future__ import annotations


class KernelFxError(Exception):
    """Base class of every error kernel_fx raises on purpose."""


class MappingError(KernelFxError, ValueError):
    """A kernel mapping, device or mode given by the user is malformed."""


class ArgumentTypeError(KernelFxError, TypeError):
    """An argument of a kernel_fx function has a type it does not take (e.g. a model that is no `nn.Module`)."""


class SettingError(KernelFxError, ValueError):
    """An environment variable that steers kernel_fx (`KERNEL_FX_DISABLE`, `DISABLE_KERNEL_MAPPING`) has a value it cannot read."""


class KernelLoadError(KernelFxError):
    """A kernel could not be found, downloaded, verified or imported."""


class LayerNotFoundError(KernelLoadError, ValueError):
    """A loaded kernel has no `layers`, no such layer, or no such function (`kernels` raises `ValueError`)."""


class KernelValidationError(KernelFxError):
    """A kernel layer does not fit the layer it should replace."""


class KernelizeError(KernelFxError, ValueError):
    """`kernelize(..., use_fallback=False)` met a site it could not kernelize (a `ValueError`, as in `kernels`)."""


class KernelFallbackWarning(UserWarning):
    """A kernel the user asked for explicitly does not run (e.g. a TRAINING mapping entry whose kernel has
    no backward); the original forward runs instead and the report gives the reason."""
