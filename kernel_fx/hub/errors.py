"""Why loading a kernel from the Hub failed, one type per cause.

All but `LockfileError` are `KernelLoadError`s, so `kernelize(use_fallback=True)` records any of
them as the site's fallback reason, with the message; callers that care catch the precise type.
Where Hugging Face `kernels` 0.19 raises `ValueError` for the same cause (a lock file that cannot
be used, a malformed `LOCAL_KERNELS`), the type is a `ValueError` too.
"""

from __future__ import annotations

from ..errors import KernelFxError, KernelLoadError


class HubUnavailableError(KernelLoadError):
    """The Hub could not answer: unreachable, or it answered with a server error."""


class HubUnreachableError(HubUnavailableError):
    """No connection to the Hub endpoint (refused, timed out, dropped)."""


class HubTimeoutError(HubUnreachableError):
    """The Hub accepted the connection (or never completed it) but did not answer within `KERNEL_FX_HUB_TIMEOUT`."""


class HubServerError(HubUnavailableError):
    """The Hub answered with an HTTP error that is not "not found" (5xx, 403, ...)."""


class KernelRepoNotFoundError(KernelLoadError):
    """The kernel repo does not exist under any repo type tried, or is private or gated."""


class KernelRevisionNotFoundError(KernelLoadError):
    """The revision (branch, tag, commit) or version (branch `v<N>`) does not exist in the repo."""


class NoVariantError(KernelLoadError):
    """No build variant of the repo fits this system."""


class NotCachedError(KernelLoadError):
    """The kernel is needed from the cache (offline, or from a lock file) but is not there."""


class KernelIntegrityError(KernelLoadError):
    """Files on disk differ from the sha256 recorded in a lock file or in the metadata digest."""


class UntrustedKernelError(KernelLoadError):
    """The kernel's code would run on import, but its repo is not trusted."""


class LockfileError(KernelFxError, ValueError):
    """A lock file or a project's kernel declaration is missing, malformed, or has no entry for the kernel.

    Not a `KernelLoadError`: a lock that was asked for and cannot be used is a configuration
    error, never a reason to fall back to the original forward quietly.
    """


class EnvironmentVariableError(KernelLoadError, ValueError):
    """An environment variable that steers loading (`KERNEL_FX_LOCAL_KERNELS`, `LOCAL_KERNELS`,
    `KERNEL_FX_HUB_TIMEOUT`) is malformed."""


class UnsupportedArchError(KernelLoadError, RuntimeError):
    """The build's declared archs (metadata `backend.archs`) do not include this device; `check_arch=False` skips the check."""


class KernelDependencyError(KernelLoadError, RuntimeError):
    """A kernel's dependencies (`kernel-depends` in its metadata) are malformed, form a cycle, or are asked
    for with `get_kernel_dep` outside the kernel's import or without being declared."""
