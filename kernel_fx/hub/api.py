"""Loading kernels as modules: from the Hub, from a lock file, or from a local directory.

Every function first honours `KERNEL_FX_LOCAL_KERNELS` and, except `load_kernel` (as in the
`kernels` package), `LOCAL_KERNELS`: a mapped repo id loads from its local path. A Hub kernel is
pinned to a commit (see `resolve`), one build variant is chosen for this system (see `variants`),
only that variant is downloaded, and its code is imported under the metadata `id` once the repo
passed the trust gate (see `trust`) and the files their `digest` (see `integrity`).

>>> import os, tempfile
>>> from pathlib import Path
>>> repo = Path(tempfile.mkdtemp())
>>> (repo / "build" / "torch-universal").mkdir(parents=True)
>>> _ = (repo / "build" / "torch-universal" / "__init__.py").write_text("def twice(x):\\n    return 2 * x\\n")
>>> os.environ["KERNEL_FX_LOCAL_KERNELS"] = f"me/twice={repo}"
>>> get_kernel("me/twice", version=1).twice(21)
42
>>> has_kernel("me/twice")
True
>>> [c.name for c in get_kernel_variants("me/twice").checks]
['torch-universal']
>>> del os.environ["KERNEL_FX_LOCAL_KERNELS"]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from ..errors import MappingError
from . import archs, env
from .deps import load_dependencies
from .errors import KernelRepoNotFoundError, KernelRevisionNotFoundError
from .importer import KernelSource, import_variant, imported, read_metadata
from .integrity import check_digest
from .local import load_local, local_variant_checks
from .resolve import fetch, resolve
from .revisions import Resolved
from .trust import TrustSetting, check_trust_setting, check_trusted
from .variants import SystemInfo, VariantCheck, check_variants, choose_variant, system_info

if TYPE_CHECKING:
    from .locks import LockEntry

__all__ = ["KernelVariants", "get_kernel", "get_kernel_variants", "get_local_kernel", "get_locked_kernel", "has_kernel", "load_kernel"]


@dataclass(frozen=True)
class KernelVariants:
    """Every variant of a repo at a revision, accepted or rejected with its reason, for a system."""

    repo_id: str
    revision: str
    commit: str | None
    system: SystemInfo
    checks: tuple[VariantCheck, ...]
    from_cache: bool = False

    @property
    def chosen(self) -> VariantCheck | None:
        """The variant `get_kernel` would load, or None."""
        return self.checks[0] if self.checks and self.checks[0].accepted else None


def get_kernel(
    repo_id: str,
    *,
    revision: str | None = None,
    version: int | None = None,
    backend: str | None = None,
    trust_remote_code: TrustSetting = False,
    user_agent: str | dict | None = None,
    check_arch: bool = True,
) -> ModuleType:
    """Download (if needed) and import the variant of Hub kernel repo `repo_id` that fits this system.

    `revision` is a branch, tag or commit sha (default `main`); `version=N` means branch `vN`; give
    at most one. `backend` ("cpu", "cuda", ...) defaults to torch's build. The repo must be trusted
    (see `trust_remote_code` and KERNEL_FX_TRUSTED). `user_agent` goes with the Hub requests;
    `check_arch=False` loads a build whose metadata archs omit this GPU (see `archs`). See the
    module docstring for an example.
    """
    _check_request(repo_id, revision, version)
    check_trust_setting(trust_remote_code)
    override = env.local_kernels().get(repo_id)
    if override is not None:
        return load_local_kernel(override, backend=backend, repo_id=repo_id, check_arch=check_arch)
    system = system_info(backend)
    resolved = resolve(repo_id, revision=revision, version=version, system=system, user_agent=user_agent)
    choice = choose_variant(list(resolved.variants), system, where=_where(resolved))
    check_trusted(repo_id, trust_remote_code)
    variant_dir, commit = fetch(resolved, choice.name, user_agent=user_agent)
    where = f"{resolved} variant {choice.name}"
    metadata = read_metadata(variant_dir)
    if check_arch:
        archs.check_arch(metadata, where=where)
    module = imported(variant_dir)
    if module is not None:
        return module
    check_digest(variant_dir, metadata, where=where)
    unpinned = revision is None and version is None
    source = KernelSource(repo_id, choice.name, str(variant_dir), revision=resolved.revision, commit=commit, unpinned=unpinned)
    dependencies = load_dependencies(metadata, repo_id=repo_id, where=where, load=lambda dep: get_kernel(
        dep.repo_id, revision=dep.revision, version=dep.version, backend=backend, trust_remote_code=trust_remote_code,
        user_agent=user_agent, check_arch=check_arch))
    return import_variant(variant_dir, source, dependencies)


def get_local_kernel(repo_path: str | Path, *, backend: str | None = None, check_arch: bool = True) -> ModuleType:
    """Import the variant of the local kernel repo at `repo_path` that fits this system; the kernels it
    depends on come from `LOCAL_KERNELS` or the Hub, as `get_kernel` finds them.

    `repo_path` may also point straight at a variant directory (one holding `__init__.py` or, for
    a zipped build, `metadata.json`). `check_arch=False` skips the device check (see `archs`).
    """
    return load_local_kernel(repo_path, backend=backend, check_arch=check_arch)


def load_local_kernel(repo_path: str | Path, *, backend: str | None = None, repo_id: str | None = None,
                      check_arch: bool = True) -> ModuleType:
    """`get_local_kernel`, labelled `repo_id (local path)` when it stands in for a Hub repo (`LOCAL_KERNELS`)."""
    return load_local(repo_path, backend=backend, repo_id=repo_id, check_arch=check_arch, load_dependency=lambda dep: get_kernel(
        dep.repo_id, revision=dep.revision, version=dep.version, backend=backend, check_arch=check_arch))


def has_kernel(
    repo_id: str,
    *,
    revision: str | None = None,
    version: int | None = None,
    backend: str | None = None,
    trust_remote_code: TrustSetting = False,
) -> bool:
    """Whether `repo_id` at `revision` / `version` exists and has a variant for this system.

    Nothing is downloaded or imported, so trust is not checked (`get_kernel` says when it is
    missing); `trust_remote_code` is accepted so that the same arguments fit both functions.
    An unreachable Hub, or offline mode without a cached copy, raises: the answer is unknown.
    """
    _check_request(repo_id, revision, version)
    check_trust_setting(trust_remote_code)
    try:
        found = get_kernel_variants(repo_id, revision=revision, version=version, backend=backend)
    except (KernelRepoNotFoundError, KernelRevisionNotFoundError):
        return False
    return found.chosen is not None


def get_kernel_variants(
    repo_id: str, *, revision: str | None = None, version: int | None = None, backend: str | None = None
) -> KernelVariants:
    """Every build variant of `repo_id` at `revision` / `version`, judged against this system.

    Offline, only the variants in the cache are known (`from_cache` is then True).
    """
    _check_request(repo_id, revision, version)
    system = system_info(backend)
    override = env.local_kernels().get(repo_id)
    if override is not None:
        checks = local_variant_checks(override, backend=backend)
        return KernelVariants(repo_id, f"local {override}", None, system, tuple(checks))
    resolved = resolve(repo_id, revision=revision, version=version, system=system)
    checks = check_variants(list(resolved.variants), system)
    return KernelVariants(repo_id, resolved.revision, resolved.commit, system, tuple(checks), resolved.from_cache)


def load_kernel(
    repo_id: str, *, lockfile: str | Path | None = None, backend: str | None = None, check_arch: bool = True
) -> ModuleType:
    """Import `repo_id` as pinned in `lockfile`, from the cache only, after checking its files.

    Never downloads (`kernel-fx download LOCKFILE` fetches what a lock names; `get_locked_kernel`
    downloads too). Without `lockfile`, the nearest `kernel-fx.lock` or `kernels.lock` in the
    working directory or its parents is used. A `kernel-fx.lock` pins every file's sha256; a
    `kernels.lock` (the `kernels` package's) pins the commit, and the files are checked against the
    digest in the variant's metadata. Lock-pinned kernels need no trust opt-in. A lock file that
    cannot be read or has no entry for `repo_id` raises `LockfileError`, a `ValueError` as in `kernels`.

    >>> load_kernel("org/act", lockfile="/nonexistent/kernel-fx.lock")
    Traceback (most recent call last):
    ...
    kernel_fx.hub.errors.LockfileError: Lock file /nonexistent/kernel-fx.lock does not exist; create it with `kernel-fx lock`.
    """
    override = env.local_kernels(locked=True).get(repo_id)
    if override is not None:
        return load_local_kernel(override, backend=backend, repo_id=repo_id, check_arch=check_arch)
    from .locks import locked_entries

    path, entries = locked_entries(repo_id, lockfile)
    return load_locked(repo_id, path, entries, backend=backend, check_arch=check_arch)


def get_locked_kernel(
    repo_id: str,
    *,
    lockfile: str | Path | None = None,
    backend: str | None = None,
    trust_remote_code: TrustSetting = False,
    user_agent: str | dict | None = None,
    check_arch: bool = True,
) -> ModuleType:
    """`load_kernel`, but a locked kernel missing from the cache is downloaded first (unless
    `HF_HUB_OFFLINE` is set), as `kernels.get_locked_kernel` does. `trust_remote_code` is accepted
    for the same signature; a lock-pinned kernel needs no trust opt-in."""
    check_trust_setting(trust_remote_code)
    override = env.local_kernels(locked=True).get(repo_id)
    if override is not None:
        return load_local_kernel(override, backend=backend, repo_id=repo_id, check_arch=check_arch)
    from .locks import locked_entries

    path, entries = locked_entries(repo_id, lockfile)
    return load_locked(repo_id, path, entries, backend=backend, check_arch=check_arch, download=True, user_agent=user_agent)


def load_locked(repo_id: str, lockfile: Path, entries: Sequence[LockEntry], *, backend: str | None = None, check_arch: bool = True,
                download: bool = False, user_agent: str | dict | None = None) -> ModuleType:
    """Import `repo_id` pinned by `entries` (its entries of `lockfile`, already read), after checking its
    files; `download` fetches a locked variant missing from the cache unless offline."""
    from .locks import LockedCommit, choose_locked, dependency_entries, download_locked, verified_dir

    system = system_info(backend)
    if download and not env.offline():
        first = entries[0] if isinstance(entries[0], LockedCommit) else choose_locked(list(entries), repo_id, system, lockfile)
        download_locked([first], lockfile, system, user_agent=user_agent)
    entry = choose_locked(list(entries), repo_id, system, lockfile)
    variant_dir = entry.cached_dir()
    module = imported(variant_dir)
    if module is None:  # once its code ran in this process, checking the files protects nothing
        verified_dir(entry, lockfile)
    metadata = read_metadata(variant_dir)
    if check_arch:
        archs.check_arch(metadata, where=entry)
    if module is not None:
        return module
    check_digest(variant_dir, metadata, where=str(entry), warn_missing=entry.files is None)
    source = KernelSource(repo_id, entry.variant, str(variant_dir), revision=entry.revision, commit=entry.commit)
    # A dependency is pinned by the same lock file (`kernels lock` and `kernel-fx lock` lock them flat).
    dependencies = load_dependencies(metadata, repo_id=repo_id, where=entry, load=lambda dep: load_locked(
        dep.repo_id, lockfile, dependency_entries(dep, lockfile, needed_by=repo_id), backend=backend, check_arch=check_arch,
        download=download, user_agent=user_agent))
    return import_variant(variant_dir, source, dependencies)


def _check_request(repo_id: object, revision: object, version: object) -> None:
    if not isinstance(repo_id, str) or not env.REPO_ID.match(repo_id):
        raise MappingError(f"repo_id={repo_id!r} must be a Hub repo id such as 'kernels-community/activation'.")
    if revision is not None and version is not None:
        raise MappingError(f"{repo_id}: got revision={revision!r} and version={version!r}; give one of them.")
    if revision is not None and (not isinstance(revision, str) or not revision):
        raise MappingError(f"{repo_id}: revision={revision!r} must be a branch, tag or commit sha.")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 0):
        raise MappingError(f"{repo_id}: version={version!r} must be a non-negative int (branch v<N>).")


def _where(resolved: Resolved) -> str:
    note = " (only the variants in the local cache were considered)" if resolved.from_cache else ""
    return f"kernel repo {resolved}{note}"
