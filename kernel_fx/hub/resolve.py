"""Which commit, and which variants, a repo at a revision or version means: cache or Hub.

Order of look-up:
1. a full commit sha that is in the cache with a variant fitting this system: the cache, with no
   request at all (a commit never changes, so there is nothing to ask);
2. `HF_HUB_OFFLINE=1`: the cache only (its `refs/` for branches, tags and `v<N>` versions);
3. otherwise the Hub; when the Hub is unreachable, failing, or silent for `KERNEL_FX_HUB_TIMEOUT`
   seconds, a cached copy of the same revision is used with a warning, and without one the Hub's
   error is raised.

The Hub requests themselves are in `remote`, imported only when needed; both share `revisions`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from . import cache, env
from .errors import HubUnavailableError, NotCachedError
from .revisions import Resolved, announce_newer, requested
from .variants import SystemInfo, check_variant

logger = logging.getLogger(__name__)

# Hub kernel repos have repo type "kernel"; older ones are model repos.
CACHE_REPO_TYPES = ("kernel", "model")


def resolve(
    repo_id: str, *, revision: str | None, version: int | None, system: SystemInfo, user_agent: str | dict | None = None
) -> Resolved:
    """Pin `repo_id` at `revision` / `version` to a commit and list its variants (see module doc).

    `user_agent` goes with the Hub requests, if any are made."""
    if version is None and cache.is_commit(revision):
        hit = from_cache(repo_id, revision, None)
        if hit is not None and any(check_variant(v, system).accepted for v in hit.variants):
            return hit
    if env.offline():
        return cached_or_raise(repo_id, revision, version)
    from . import remote  # the Hub client is imported only when the Hub is needed

    try:
        return remote.resolve_remote(repo_id, revision, version, user_agent=user_agent)
    except HubUnavailableError as exc:
        hit = from_cache(repo_id, revision, version)
        if hit is None:
            where = env.hub_cache_dir()
            raise type(exc)(
                f"{exc} Nothing of {repo_id}@{requested(revision, version)} is cached in {where} to fall back on "
                "(once cached, it loads without the Hub, and HF_HUB_OFFLINE=1 stops even trying)."
            ) from exc
        logger.warning("kernel_fx: %s Using the cached %s.", exc, hit)
        return hit


def fetch(resolved: Resolved, variant: str, *, user_agent: str | dict | None = None) -> tuple[Path, str]:
    """Variant `variant` of `resolved` on disk, downloaded if needed: (its directory, its commit)."""
    if resolved.from_cache:
        folder = cache.repo_folder(env.hub_cache_dir(), resolved.repo_type, resolved.repo_id)
        return cache.variant_dir(folder, resolved.commit, variant), resolved.commit
    from . import remote

    return remote.download_variant(resolved, variant, user_agent=user_agent)


def from_cache(repo_id: str, revision: str | None, version: int | None) -> Resolved | None:
    """The cached commit of the revision or version, with its cached variants; None if absent."""
    root = env.hub_cache_dir()
    for repo_type in CACHE_REPO_TYPES:
        folder = cache.repo_folder(root, repo_type, repo_id)
        if version is not None:
            versions = cache.cached_versions(folder)
            commit = versions.get(version)
            if commit is not None:
                announce_newer(repo_id, version, max(versions))
        else:
            commit = cache.cached_commit(folder, revision or "main")
        variants = cache.cached_variants(folder, commit) if commit else []
        if variants:
            return Resolved(repo_id, repo_type, requested(revision, version), commit, tuple(variants), from_cache=True)
    return None


def cached_or_raise(repo_id: str, revision: str | None, version: int | None) -> Resolved:
    """`from_cache`, or a `NotCachedError` saying what the cache holds and how to fill it."""
    hit = from_cache(repo_id, revision, version)
    if hit is not None:
        return hit
    root = env.hub_cache_dir()
    raise NotCachedError(
        f"HF_HUB_OFFLINE is set and kernel {repo_id}@{requested(revision, version)} is not in the cache {root} "
        f"({_cached_summary(root, repo_id)}). Load it once with the network on, pre-fetch it with "
        "`kernel-fx download <lockfile>`, point KERNEL_FX_CACHE at a filled cache, or unset HF_HUB_OFFLINE."
    )


def _cached_summary(root: Path, repo_id: str) -> str:
    versions: set[int] = set()
    refs: set[str] = set()
    for repo_type in CACHE_REPO_TYPES:
        folder = cache.repo_folder(root, repo_type, repo_id)
        versions |= set(cache.cached_versions(folder))
        refs |= set(cache.cached_refs(folder))
    if not refs:
        return "nothing is cached for this repo"
    listed = ", ".join(str(v) for v in sorted(versions)) or "none"
    return f"cached versions: {listed}; cached branches and tags: {', '.join(sorted(refs))}"
