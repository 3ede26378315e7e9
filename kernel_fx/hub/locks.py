"""Lock files: which commit and variant of each kernel a project runs, and every file's sha256.

`kernel-fx.lock` is JSON:

    {"kernel_fx_lock": 1,
     "kernels": [{"repo_id": "kernels-community/activation", "repo_type": "kernel", "revision": "v1",
                  "commit": "<40 hex>", "variant": "torch-cpu",
                  "files": {"__init__.py": "<sha256>", "layers.py": "<sha256>", ...}}]}

A repo may be locked for several variants (one per target system); loading picks the one that
fits. Files are relative to `build/<variant>/`. A locked kernel is loaded from the cache only, and
only after every file matched its sha256.

A `kernels.lock` of the Hugging Face `kernels` package is read too (see `kernels_lock`): it pins a
commit per kernel, and loading picks the cached variant of that commit that fits, checked against
the digest in its metadata. Whatever the format, a lock file that was asked for and cannot be read,
or has no entry for the kernel, raises `LockfileError`.

>>> entry = LockedVariant("org/act", "kernel", "v1", "ab" * 20, "torch-cpu", {"__init__.py": "0" * 64})
>>> parse_entry(entry.as_dict(), "x.lock", 0) == entry
True
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import cache, env
from .errors import LockfileError, NotCachedError, NoVariantError
from .importer import read_metadata
from .integrity import check_digest, hash_files, verify_files
from .kernels_lock import KERNELS_LOCKFILE_NAME, LockedCommit, is_kernels_lock, parse_kernels_lock
from .resolve import fetch, resolve
from .revisions import Resolved
from .variants import SystemInfo, choose_variant

if TYPE_CHECKING:
    from .deps import KernelDependency
    from .specs import KernelSpec

logger = logging.getLogger(__name__)

LOCKFILE_NAME = "kernel-fx.lock"
FORMAT_VERSION = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class LockedVariant:
    """One variant of one kernel, pinned to a commit, with the sha256 of each of its files.

    `files` is None for a variant chosen from a `kernels.lock`, which records no file hashes.
    """

    repo_id: str
    repo_type: str
    revision: str
    commit: str
    variant: str
    files: dict[str, str] | None = field(hash=False)

    def as_dict(self) -> dict[str, Any]:
        return {"repo_id": self.repo_id, "repo_type": self.repo_type, "revision": self.revision,
                "commit": self.commit, "variant": self.variant, "files": dict(sorted((self.files or {}).items()))}

    def cached_dir(self) -> Path:
        """Where this variant lives in the cache (it may be absent)."""
        folder = cache.repo_folder(env.hub_cache_dir(), self.repo_type, self.repo_id)
        return cache.variant_dir(folder, self.commit, self.variant)

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.commit[:12]} variant {self.variant}"


LockEntry = LockedVariant | LockedCommit


# -- reading and writing ----------------------------------------------------------------------


def find_lockfile(start: Path | None = None) -> Path:
    """The nearest `kernel-fx.lock` or `kernels.lock` in `start` (default: the working directory) or
    its parents; in one folder, `kernel-fx.lock` (which also pins every file) wins."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        for name in (LOCKFILE_NAME, KERNELS_LOCKFILE_NAME):
            if (folder / name).is_file():
                return folder / name
    raise LockfileError(
        f"No {LOCKFILE_NAME} or {KERNELS_LOCKFILE_NAME} in {here} or its parents; pass lockfile=, or create one with "
        "`kernel-fx lock` in the project."
    )


def read_lockfile(path: Path) -> list[LockEntry]:
    """The entries of the lock file at `path` (either format), validated."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LockfileError(f"Lock file {path} does not exist; create it with `kernel-fx lock`.") from None
    except (OSError, ValueError) as exc:
        raise LockfileError(f"Cannot read lock file {path}: {exc}.") from exc
    if is_kernels_lock(data):
        return list(parse_kernels_lock(data, path))
    if not isinstance(data, dict) or data.get("kernel_fx_lock") != FORMAT_VERSION or not isinstance(data.get("kernels"), list):
        raise LockfileError(
            f"{path} is neither a kernel_fx lock file (expected {{\"kernel_fx_lock\": {FORMAT_VERSION}, \"kernels\": [...]}}) "
            "nor a kernels.lock (a JSON list)."
        )
    return [parse_entry(item, path, i) for i, item in enumerate(data["kernels"])]


def parse_entry(item: object, path: Path | str, index: int) -> LockedVariant:
    """One validated lock entry; the error names the file, the entry and the bad field."""
    where = f"{path}: kernels[{index}]"
    if not isinstance(item, dict):
        raise LockfileError(f"{where} must be an object, got {item!r}.")
    for key in ("repo_id", "repo_type", "revision", "commit", "variant"):
        if not isinstance(item.get(key), str) or not item[key]:
            raise LockfileError(f"{where} field {key!r} must be a non-empty string, got {item.get(key)!r}.")
    if not cache.is_commit(item["commit"]):
        raise LockfileError(f"{where} commit {item['commit']!r} must be a 40-hex commit sha.")
    files = item.get("files")
    if not isinstance(files, dict) or not files or not all(isinstance(v, str) and _SHA256.match(v) for v in files.values()):
        raise LockfileError(f"{where} files must map each file of the variant to its sha256 (64 hex).")
    return LockedVariant(item["repo_id"], item["repo_type"], item["revision"], item["commit"], item["variant"], dict(files))


def write_lockfile(path: Path, entries: Iterable[LockedVariant]) -> None:
    """Write `entries`, sorted by repo and variant, so that re-locking gives a small diff."""
    ordered = sorted(entries, key=lambda e: (e.repo_id, e.variant))
    data = {"kernel_fx_lock": FORMAT_VERSION, "kernels": [e.as_dict() for e in ordered]}
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def locked_entries(repo_id: str, lockfile: str | Path | None) -> tuple[Path, tuple[LockEntry, ...]]:
    """The lock file (the nearest one when `lockfile` is None) and its entries for `repo_id`; raises
    `LockfileError` when it cannot be read or does not lock `repo_id`."""
    path = Path(lockfile) if lockfile is not None else find_lockfile()
    entries = read_lockfile(path)
    mine = tuple(e for e in entries if e.repo_id == repo_id)
    if not mine:
        locked = ", ".join(sorted({e.repo_id for e in entries})) or "nothing"
        raise LockfileError(
            f"Lock file {path} has no entry for {repo_id!r} (it locks: {locked}); add it with `kernel-fx lock {repo_id}`."
        )
    return path, mine


def dependency_entries(dependency: KernelDependency, lockfile: Path, *, needed_by: str) -> tuple[LockEntry, ...]:
    """The entries of `lockfile` that pin `dependency` (a kernel `needed_by` depends on) at the version or
    revision it asks for; `LockfileError` when the lock does not pin it so."""
    mine = [e for e in read_lockfile(lockfile) if e.repo_id == dependency.repo_id]
    matching = tuple(e for e in mine if (e.requested if isinstance(e, LockedCommit) else e.revision) == dependency.requested)
    if not matching:
        found = f"locks it at {', '.join(sorted({str(e) for e in mine}))}" if mine else "does not lock it"
        raise LockfileError(
            f"Kernel {needed_by} depends on {dependency}, but lock file {lockfile} {found}; lock the project again "
            "(`kernel-fx lock` or `kernels lock` lock a kernel's dependencies too)."
        )
    return matching


def choose_locked(entries: list[LockEntry], repo_id: str, system: SystemInfo, lockfile: Path) -> LockedVariant:
    """The locked variant of `repo_id` that fits `system`.

    From a `kernels.lock`, the first entry of `repo_id` is used (as `kernels` does), and the
    variant is the cached one of its commit that fits.
    """
    mine = [e for e in entries if e.repo_id == repo_id]
    if not mine:
        locked = ", ".join(sorted({e.repo_id for e in entries})) or "nothing"
        raise LockfileError(
            f"Lock file {lockfile} has no entry for {repo_id!r} (it locks: {locked}); add it with `kernel-fx lock {repo_id}`."
        )
    if isinstance(mine[0], LockedCommit):
        return cached_variant(mine[0], system, lockfile)
    choice = choose_variant([e.variant for e in mine], system, where=f"{repo_id} in lock file {lockfile}")
    return next(e for e in mine if isinstance(e, LockedVariant) and e.variant == choice.name)


def cached_variant(entry: LockedCommit, system: SystemInfo, lockfile: Path) -> LockedVariant:
    """The variant of `entry`'s commit that is in the cache and fits `system`."""
    root = env.hub_cache_dir()
    for repo_type in ("kernel", "model"):
        folder = cache.repo_folder(root, repo_type, entry.repo_id)
        if (folder / "snapshots" / entry.commit).is_dir():
            where = f"{entry} in lock file {lockfile} (only the variants in the local cache were considered)"
            choice = choose_variant(cache.cached_variants(folder, entry.commit), system, where=where)
            return LockedVariant(entry.repo_id, repo_type, entry.requested, entry.commit, choice.name, None)
    raise NotCachedError(
        f"{entry} (locked in {lockfile}) is not in the cache {root}; fetch it with `kernel-fx download {lockfile}` "
        "(set KERNEL_FX_CACHE to use another cache)."
    )


def verified_dir(entry: LockedVariant, lockfile: Path) -> Path:
    """The cached directory of `entry`, after checking every file against the lock (a variant from a
    `kernels.lock` has no file hashes there: the caller checks its metadata digest)."""
    variant_dir = entry.cached_dir()
    if not variant_dir.is_dir():
        raise NotCachedError(
            f"{entry} (locked in {lockfile}) is not in the cache {env.hub_cache_dir()}; "
            f"fetch it with `kernel-fx download {lockfile}` (set KERNEL_FX_CACHE to use another cache)."
        )
    if entry.files is not None:
        verify_files(variant_dir, entry.files, what=f"lock file {lockfile} ({entry})")
    return variant_dir


# -- creating and pre-fetching ----------------------------------------------------------------


def lock_kernels(specs: Iterable[KernelSpec], system: SystemInfo) -> list[LockedVariant]:
    """Resolve each spec, download its variants and record their files' sha256; the kernels a locked
    variant depends on (`kernel-depends` in its metadata, see `deps`) are locked too, in the same list.

    A spec without `variants` locks the variant that fits `system`; a dependency locks those of the
    same variants it has, else the one that fits `system`.
    """
    from .deps import kernel_dependencies
    from .specs import KernelSpec

    entries: list[LockedVariant] = []
    pending, seen = list(specs), set()
    while pending:
        spec = pending.pop(0)
        if (spec.repo_id, spec.revision, spec.version) in seen:
            continue
        seen.add((spec.repo_id, spec.revision, spec.version))
        resolved = resolve(spec.repo_id, revision=spec.revision, version=spec.version, system=system)
        for variant in _variants_to_lock(spec, resolved, system):
            variant_dir, commit = fetch(resolved, variant)
            entries.append(LockedVariant(spec.repo_id, resolved.repo_type, resolved.revision, commit, variant, hash_files(variant_dir)))
            logger.info("kernel_fx: locked %s", entries[-1])
            for dep in kernel_dependencies(read_metadata(variant_dir), where=entries[-1]):
                pending.append(KernelSpec(dep.repo_id, dep.revision, dep.version, spec.variants, dependency=True))
    return entries


def _variants_to_lock(spec: KernelSpec, resolved: Resolved, system: SystemInfo) -> tuple[str, ...]:
    if spec.dependency and spec.variants:
        spec = replace(spec, variants=tuple(v for v in spec.variants if v in resolved.variants))
    if not spec.variants:
        return (choose_variant(list(resolved.variants), system, where=f"kernel repo {resolved}").name,)
    missing = [v for v in spec.variants if v not in resolved.variants]
    if missing:
        raise LockfileError(
            f"Kernel repo {resolved} has no variant {', '.join(missing)}; its variants are: {', '.join(resolved.variants) or 'none'}."
        )
    return spec.variants


def download_locked(entries: Iterable[LockEntry], lockfile: Path, system: SystemInfo | None = None, *,
                    user_agent: str | dict | None = None, all_variants: bool = False) -> list[Path]:
    """Make every locked variant present and verified in the cache; return their directories.

    For a `kernels.lock` entry, that is the variant of its commit that fits `system` (default: this one),
    or with `all_variants` every variant of that commit, each checked against its metadata digest (as
    `kernels download --all-variants`; offline, every variant of it in the cache). A `kernel-fx.lock`
    names its variants: each is fetched and checked whatever `all_variants` says.
    """
    from . import remote
    from .variants import system_info

    system = system or system_info()
    paths = []
    for entry in entries:
        if isinstance(entry, LockedCommit):
            paths.extend(_download_all(entry, lockfile, user_agent) if all_variants else [_download_commit(entry, lockfile, system, user_agent)])
            continue
        if not entry.cached_dir().is_dir():
            if env.offline():
                raise NotCachedError(f"{entry} is not in the cache {env.hub_cache_dir()} and HF_HUB_OFFLINE is set; unset it to download.")
            pinned = Resolved(entry.repo_id, entry.repo_type, entry.commit, entry.commit, (entry.variant,))
            remote.download_variant(pinned, entry.variant, user_agent=user_agent)
        paths.append(verified_dir(entry, lockfile))
    return paths


def _download_commit(entry: LockedCommit, lockfile: Path, system: SystemInfo, user_agent: str | dict | None = None) -> Path:
    from . import remote

    try:
        locked = cached_variant(entry, system, lockfile)
    except (NotCachedError, NoVariantError):
        if env.offline():
            raise
        resolved = remote.resolve_remote(entry.repo_id, entry.commit, None, user_agent=user_agent)
        choice = choose_variant(list(resolved.variants), system, where=f"{entry} in lock file {lockfile}")
        remote.download_variant(resolved, choice.name, user_agent=user_agent)
        locked = cached_variant(entry, system, lockfile)
    variant_dir = verified_dir(locked, lockfile)
    check_digest(variant_dir, read_metadata(variant_dir), where=str(locked))
    return variant_dir


def _download_all(entry: LockedCommit, lockfile: Path, user_agent: str | dict | None = None) -> list[Path]:
    """Every variant of `entry`'s commit in the cache, each checked against its metadata digest."""
    from . import remote

    if env.offline():
        folders = [cache.repo_folder(env.hub_cache_dir(), t, entry.repo_id) for t in ("kernel", "model")]
        folder = next((f for f in folders if (f / "snapshots" / entry.commit).is_dir()), None)
        if folder is None:
            raise NotCachedError(f"{entry} (locked in {lockfile}) is not in the cache {env.hub_cache_dir()} and HF_HUB_OFFLINE is set; "
                                 "unset it to download.")
        repo_type, variants = folder.name.split("s--", 1)[0], cache.cached_variants(folder, entry.commit)
    else:
        resolved = remote.resolve_remote(entry.repo_id, entry.commit, None, user_agent=user_agent)
        for variant in resolved.variants:
            remote.download_variant(resolved, variant, user_agent=user_agent)
        repo_type, variants = resolved.repo_type, list(resolved.variants)
    if not variants:
        raise NoVariantError(f"{entry} (locked in {lockfile}) has no build variants.")
    paths = []
    for variant in variants:
        locked = LockedVariant(entry.repo_id, repo_type, entry.requested, entry.commit, variant, None)
        variant_dir = verified_dir(locked, lockfile)
        check_digest(variant_dir, read_metadata(variant_dir), where=str(locked))
        paths.append(variant_dir)
    return paths
