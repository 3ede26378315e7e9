"""The few exception types kernel_fx raises.

Every message names the offending value and what is allowed, in one sentence.
"""

from __future__ import annotations


class KernelFxError(Exception):
    """Base class of every error kernel_fx raises on purpose."""


class MappingError(KernelFxError, ValueError):
    """A kernel mapping, device or mode given by the user is malformed."""


class KernelLoadError(KernelFxError):
    """A kernel could not be found, downloaded, verified or imported."""


class KernelValidationError(KernelFxError):
    """A kernel layer does not fit the layer it should replace."""


class KernelizeError(KernelFxError):
    """`kernelize(..., use_fallback=False)` met a site it could not kernelize."""
