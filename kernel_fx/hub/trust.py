"""Who may run code on import: the trust gate in front of every Hub kernel that is not lock-pinned.

A repo is trusted when its owner or its id is in `DEFAULT_TRUSTED` or `KERNEL_FX_TRUSTED`
(comma-separated), or when the caller opts in with `trust_remote_code=True` or a list of repo ids
or owners. Local directories and lock-verified kernels do not pass through here.

>>> is_trusted("kernels-community/activation", False)
True
>>> is_trusted("alice/activation", ["alice/activation"]), is_trusted("alice/activation", False)
(True, False)
"""

from __future__ import annotations

from collections.abc import Collection

from ..errors import MappingError
from . import env
from .errors import UntrustedKernelError

DEFAULT_TRUSTED = frozenset({"kernels-community"})
TrustSetting = bool | Collection[str]


def check_trust_setting(trust_remote_code: object) -> None:
    """Raise unless `trust_remote_code` is a bool or a collection of repo ids / owners."""
    if isinstance(trust_remote_code, bool):
        return
    if isinstance(trust_remote_code, (str, bytes)) or not isinstance(trust_remote_code, Collection) or not all(
        isinstance(e, str) for e in trust_remote_code
    ):
        raise MappingError(
            f"trust_remote_code={trust_remote_code!r} must be True, False, or a list of repo ids or owners "
            "such as ['org/name', 'org']."
        )


def is_trusted(repo_id: str, trust_remote_code: TrustSetting) -> bool:
    """Whether code from `repo_id` may run, given the caller's opt-in and the trust lists."""
    check_trust_setting(trust_remote_code)
    if trust_remote_code is True:
        return True
    allowed = DEFAULT_TRUSTED | env.trusted() | (frozenset() if trust_remote_code is False else frozenset(trust_remote_code))
    return repo_id in allowed or repo_id.split("/", 1)[0] in allowed


def check_trusted(repo_id: str, trust_remote_code: TrustSetting) -> None:
    """Raise `UntrustedKernelError`, saying every way to allow it, unless `repo_id` is trusted."""
    if is_trusted(repo_id, trust_remote_code):
        return
    owner = repo_id.split("/", 1)[0]
    raise UntrustedKernelError(
        f"Kernel repo {repo_id!r} is not trusted, and its code would run on import. To allow it, pass "
        f"trust_remote_code=True or trust_remote_code=[{repo_id!r}] (to get_kernel or LayerRepository), "
        f"or add {owner!r} or {repo_id!r} to KERNEL_FX_TRUSTED (comma-separated), or pin it with "
        f"`kernel-fx lock {repo_id}` and load it through LockedLayerRepository / load_kernel. "
        f"Trusted by default: {', '.join(sorted(DEFAULT_TRUSTED))}."
    )
