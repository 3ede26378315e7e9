"""The requests to the Hub, all through huggingface_hub: resolve a revision, list variants, download.

Works with huggingface_hub 1.x and 2.x (only `HfApi.repo_info / list_repo_refs / list_repo_tree`,
`snapshot_download` and the public error types are used). The endpoint is passed explicitly on
every call because huggingface_hub reads `HF_ENDPOINT` only once, at import.

No call waits longer than `KERNEL_FX_HUB_TIMEOUT` (see `env.hub_timeout`) for an answer: it is
passed to huggingface_hub where a call takes one (`repo_info(timeout=)`, `snapshot_download
(etag_timeout=)`), and every call also runs under a deadline (see `deadlines`), since
`list_repo_refs`, `list_repo_tree` and the `repo_info` inside `snapshot_download` take none. A
request gets the timeout; a download gets it as a bound on a stall: nothing new in its cache
folder for that long, while no file body is in flight (a body is bounded by huggingface_hub's
`HF_HUB_DOWNLOAD_TIMEOUT` per read, so a slow link is not cut).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from ..errors import KernelFxError, KernelLoadError
from . import cache, deadlines, env
from .errors import (
    HubServerError,
    HubTimeoutError,
    HubUnreachableError,
    KernelRepoNotFoundError,
    KernelRevisionNotFoundError,
)
from .revisions import Resolved, announce_newer, requested

logger = logging.getLogger(__name__)

# Never downloaded, as in `kernels` 0.19: bytecode is outside the metadata digest, and Python would run it.
BYTECODE_PATTERNS = ["*.pyc", "**/__pycache__/**"]

# huggingface_hub 2.x speaks httpx2, 1.x httpx, 0.x requests: their connection errors share no base
# class, and importing a transport the client does not use would cost time, so match by name.
_TRANSPORT_ERRORS = {"TransportError", "TimeoutException", "NetworkError", "ConnectError", "RemoteProtocolError", "ConnectionError"}
_TIMEOUT_ERRORS = {"TimeoutException", "Timeout", "TimeoutError"}  # httpx(2), requests, urllib3
_TRANSPORT_MODULES = {"httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3"}


def repo_types() -> tuple[str, ...]:
    """Repo types to try, in order: "kernel" where the client supports it, then "model"."""
    from huggingface_hub import constants

    # Clients older than the kernel repo type reject repo_type="kernel" with a ValueError; with
    # them only kernels published as model repos can be reached.
    if "kernel" in getattr(constants, "REPO_TYPES_WITH_KERNEL", ()):
        return ("kernel", "model")
    return ("model",)


def resolve_remote(repo_id: str, revision: str | None, version: int | None, *, user_agent: str | dict | None = None) -> Resolved:
    """Ask the Hub for the commit of `revision` / `version` and the variants under `build/` there."""
    from huggingface_hub.errors import RepositoryNotFoundError

    timeout = env.hub_timeout()  # a malformed value is reported before anything is asked
    api = _api(user_agent)
    tried = repo_types()
    doing = f"resolving {repo_id}@{requested(revision, version)}"
    for repo_type in tried:
        try:
            return _resolve_as(api, repo_id, repo_type, revision, version, timeout.seconds)
        except RepositoryNotFoundError:
            continue  # maybe published under the other repo type
        except Exception as exc:
            _raise_translated(exc, repo_id, doing, revision)
    raise KernelRepoNotFoundError(
        f"Kernel repo {repo_id!r} was not found on {env.endpoint_label()} (tried repo types: {', '.join(tried)}). "
        "Check the name; a private or gated repo needs a token (`hf auth login` or HF_TOKEN)."
    )


def _resolve_as(api: Any, repo_id: str, repo_type: str, revision: str | None, version: int | None, seconds: float) -> Resolved:
    if version is not None:
        commit = _version_commit(api, repo_id, repo_type, version, seconds)
    elif cache.is_commit(revision):
        commit = revision  # listing the tree at it below also proves that it exists
    else:
        own = {"timeout": seconds} if _takes_timeout(type(api).repo_info) else {}
        commit = deadlines.within(lambda: api.repo_info(repo_id, repo_type=repo_type, revision=revision or "main", **own), seconds).sha
    variants = _list_variants(api, repo_id, repo_type, commit, seconds)
    return Resolved(repo_id, repo_type, requested(revision, version), commit, variants)


@functools.cache
def _takes_timeout(method: Callable) -> bool:
    """Whether this huggingface_hub's `method` accepts `timeout=` (`repo_info` does in 1.x and 2.x)."""
    return "timeout" in inspect.signature(method).parameters


def _version_commit(api: Any, repo_id: str, repo_type: str, version: int, seconds: float) -> str:
    refs = deadlines.within(lambda: api.list_repo_refs(repo_id, repo_type=repo_type), seconds)
    versions = {cache.branch_version(b.name): b.target_commit for b in refs.branches if cache.branch_version(b.name) is not None}
    if version not in versions:
        known = ", ".join(str(v) for v in sorted(versions))
        have = f"its versions are: {known}" if known else "it has no v<N> branches; pass revision= instead"
        raise KernelRevisionNotFoundError(f"Kernel repo {repo_id!r} has no version {version} (branch v{version}); {have}.")
    announce_newer(repo_id, version, max(versions))
    return versions[version]


def _list_variants(api: Any, repo_id: str, repo_type: str, commit: str, seconds: float) -> tuple[str, ...]:
    from huggingface_hub.errors import EntryNotFoundError
    from huggingface_hub.hf_api import RepoFolder

    def listing() -> list:  # the listing is lazy (paginated): consume it inside the deadline
        return list(api.list_repo_tree(repo_id, path_in_repo="build", revision=commit, repo_type=repo_type))

    try:
        entries = deadlines.within(listing, seconds)
    except EntryNotFoundError:
        return ()  # no build/ directory: reported as "the repo has no build/ variants"
    return tuple(sorted(e.path.rsplit("/", 1)[-1] for e in entries if isinstance(e, RepoFolder)))


def download_variant(resolved: Resolved, variant: str, *, user_agent: str | dict | None = None) -> tuple[Path, str]:
    """Download only `build/<variant>/` of `resolved`; return the variant directory and its commit.

    A branch, tag or version is passed to huggingface_hub by name, so that the cache records it
    under `refs/` and an offline run can find it later.
    """
    from huggingface_hub import snapshot_download

    timeout = env.hub_timeout()
    revision = resolved.commit if cache.is_commit(resolved.revision) else resolved.revision
    doing = f"downloading variant {variant} of {resolved}"
    folder = cache.repo_folder(env.hub_cache_dir(), resolved.repo_type, resolved.repo_id)
    started = time.time() - 2  # file times may lag the clock by a tick; older `.incomplete` files are stale

    def download() -> str:
        return snapshot_download(
            resolved.repo_id,
            repo_type=resolved.repo_type,
            revision=revision,
            allow_patterns=[f"build/{variant}/*"],
            ignore_patterns=BYTECODE_PATTERNS,
            cache_dir=env.cache_dir(),
            endpoint=env.endpoint(),
            library_name="kernel_fx",
            user_agent=user_agent,
            etag_timeout=timeout.seconds,  # huggingface_hub lets HF_HUB_ETAG_TIMEOUT override it
        )

    try:
        snapshot = Path(deadlines.until_stalled(
            download, timeout.seconds, watch=lambda: _folder_state(folder), busy=lambda: _receiving(folder, started)
        ))
    except Exception as exc:
        _raise_translated(exc, resolved.repo_id, doing, revision)
    commit = snapshot.name
    if commit != resolved.commit:  # the branch moved between resolving and downloading
        logger.info("kernel_fx: %s moved to commit %s while downloading; using it.", resolved, commit)
    variant_dir = snapshot / "build" / variant
    if not variant_dir.is_dir():
        raise KernelLoadError(f"Variant {variant!r} of {resolved.repo_id} at commit {commit} downloaded no files ({variant_dir}).")
    return variant_dir, commit


def _folder_state(folder: Path) -> tuple[int, int, int]:
    """(files, bytes, newest mtime) under a repo's cache folder: a download's progress, as far as it shows."""
    count = size = newest = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                stat = os.lstat(os.path.join(root, name))
            except OSError:  # renamed or removed meanwhile: the next look sees it
                continue
            count, size, newest = count + 1, size + stat.st_size, max(newest, stat.st_mtime_ns)
    return count, size, newest


def _receiving(folder: Path, since: float) -> bool:
    """Whether a file body is being received: an `.incomplete` blob made or written to since `since`.
    huggingface_hub writes plain-HTTP bodies in 10 MiB pieces, so its size says little until then."""
    try:
        return any(p.stat().st_mtime >= since for p in (folder / "blobs").glob("*.incomplete"))
    except OSError:
        return False


def _raise_translated(exc: Exception, repo_id: str, doing: str, revision: str | None) -> NoReturn:
    translated = hub_error(exc, repo_id, doing, revision)
    if translated is None:
        raise exc
    raise translated from exc


def hub_error(exc: Exception, repo_id: str, doing: str, revision: str | None = None) -> KernelLoadError | None:
    """The kernel_fx error that names the real cause of a huggingface_hub failure; None to keep `exc`."""
    from huggingface_hub import errors as hf

    if isinstance(exc, KernelFxError):
        return None
    if isinstance(exc, hf.LocalEntryNotFoundError) and exc.__cause__ is not None:
        exc = exc.__cause__  # snapshot_download wraps the failed request: report that request
    where = env.endpoint_label()
    if isinstance(exc, hf.RevisionNotFoundError):
        return KernelRevisionNotFoundError(
            f"Kernel repo {repo_id!r} has no revision {revision!r} (no branch, tag or commit of that name)."
        )
    if isinstance(exc, hf.RepositoryNotFoundError):
        return KernelRepoNotFoundError(f"Kernel repo {repo_id!r} was not found on {where} while {doing}.")
    if isinstance(exc, deadlines.DeadlineExceeded) or is_timeout(exc):
        timeout = env.hub_timeout()
        return HubTimeoutError(
            f"The Hugging Face Hub at {where} did not answer within {timeout} while {doing} "
            f"(timeout from {timeout.origin}). Check the network, proxy or HF_ENDPOINT; set KERNEL_FX_HUB_TIMEOUT "
            "to the seconds to wait (e.g. KERNEL_FX_HUB_TIMEOUT=30), or HF_HUB_OFFLINE=1 to use the cache only."
        )
    if is_connection_error(exc) or isinstance(exc, hf.LocalEntryNotFoundError):
        return HubUnreachableError(
            f"Cannot reach the Hugging Face Hub at {where} while {doing}: {type(exc).__name__}: {_first_line(exc)}. "
            "Check the network, proxy or HF_ENDPOINT."
        )
    if isinstance(exc, hf.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        return HubServerError(
            f"The Hugging Face Hub at {where} answered HTTP {status} while {doing}: {_first_line(exc)}. Retry later."
        )
    if isinstance(exc, OSError):  # e.g. huggingface_hub's size check of a broken download
        return HubServerError(f"Download failed while {doing}: {type(exc).__name__}: {_first_line(exc)}")
    return None


def is_connection_error(exc: BaseException) -> bool:
    """True for a refused, timed out or dropped connection, whichever HTTP library raised it."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return any(
        cls.__name__ in _TRANSPORT_ERRORS and cls.__module__.split(".")[0] in _TRANSPORT_MODULES
        for cls in type(exc).__mro__
    )


def is_timeout(exc: BaseException) -> bool:
    """True for a request that timed out, whichever HTTP library raised it."""
    if isinstance(exc, TimeoutError):
        return True
    return any(
        cls.__name__ in _TIMEOUT_ERRORS and cls.__module__.split(".")[0] in _TRANSPORT_MODULES for cls in type(exc).__mro__
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def _api(user_agent: str | dict | None = None) -> Any:
    from huggingface_hub import HfApi

    from .. import __version__

    return HfApi(endpoint=env.endpoint(), library_name="kernel_fx", library_version=__version__, user_agent=user_agent)
