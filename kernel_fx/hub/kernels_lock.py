"""`kernels.lock`, the lock file of the Hugging Face `kernels` package (0.19), read as `kernels` reads it.

`kernels lock <project>` writes it next to `pyproject.toml` (`[tool.kernels.dependencies]`), as a
JSON list with one entry per locked kernel:

    [{"dependency": {"repo-id": "kernels-community/activation", "version": 1},
      "lock": {"commit": "<40 or 64 hex>"}}]

`dependency` has `version` (a non-negative int: branch `v<N>`) or `revision` (a branch, tag or
commit), never both; unknown keys, a short commit or the same dependency twice make the file
unreadable, as in `kernels`. The lock pins a commit only: no variant and no file hashes, so the
files of a kernel loaded through it are checked against the digest in its metadata.

>>> [str(e) for e in parse_kernels_lock([{"dependency": {"repo-id": "org/act", "version": 1},
...                                        "lock": {"commit": "AB" * 20}}], "kernels.lock")]
['org/act@abababababab (v1, kernels.lock)']
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .env import REPO_ID
from .errors import LockfileError
from .revisions import requested

KERNELS_LOCKFILE_NAME = "kernels.lock"
_OID = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


@dataclass(frozen=True)
class LockedCommit:
    """One kernel pinned in a `kernels.lock`: the commit of a version or revision, nothing more."""

    repo_id: str
    commit: str
    version: int | None = None
    revision: str | None = None

    @property
    def requested(self) -> str:
        """What the lock's dependency asked for: `v<N>` or the revision."""
        return requested(self.revision, self.version)

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.commit[:12]} ({self.requested}, {KERNELS_LOCKFILE_NAME})"


def is_kernels_lock(data: object) -> bool:
    """Whether parsed JSON has the shape of a `kernels.lock` (a list), rather than a `kernel-fx.lock`."""
    return isinstance(data, list)


def parse_kernels_lock(data: object, path: Path | str) -> list[LockedCommit]:
    """The entries of a parsed `kernels.lock`, validated as strictly as `kernels` 0.19 does."""
    if not isinstance(data, list):
        raise LockfileError(f"{path} is not a kernels lock file: expected a JSON list of {{\"dependency\": ..., \"lock\": ...}}.")
    entries: list[LockedCommit] = []
    for index, item in enumerate(data):
        entry = _parse_item(item, f"{path}: entry [{index}]")
        if any((e.repo_id, e.version, e.revision) == (entry.repo_id, entry.version, entry.revision) for e in entries):
            raise LockfileError(f"{path} locks {entry.repo_id} {entry.requested} twice; a dependency may be locked once.")
        entries.append(entry)
    return entries


def _parse_item(item: object, where: str) -> LockedCommit:
    if isinstance(item, dict) and {"repo_id", "sha"} <= set(item):
        raise LockfileError(
            f"{where} has the repo_id/sha/variants layout of older `kernels` releases, which `kernels` 0.19 no longer "
            "reads either; lock the project again with `kernels lock` (or `kernel-fx lock`)."
        )
    _check_keys(item, {"dependency", "lock"}, {"dependency", "lock"}, where)
    dependency, lock = item["dependency"], item["lock"]
    _check_keys(dependency, {"repo-id", "version", "revision"}, {"repo-id"}, f"{where} dependency")
    _check_keys(lock, {"commit"}, {"commit"}, f"{where} lock")
    repo_id, version, revision = dependency["repo-id"], dependency.get("version"), dependency.get("revision")
    if not isinstance(repo_id, str) or not REPO_ID.match(repo_id):
        raise LockfileError(f"{where} repo-id={repo_id!r} must be a Hub repo id such as 'kernels-community/activation'.")
    if (version is None) == (revision is None):
        raise LockfileError(f"{where} dependency {repo_id} must have exactly one of `version` and `revision`.")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 0):
        raise LockfileError(f"{where} dependency {repo_id} version={version!r} must be a non-negative integer.")
    if revision is not None and not isinstance(revision, str):
        raise LockfileError(f"{where} dependency {repo_id} revision={revision!r} must be a string.")
    commit = lock["commit"]
    if not isinstance(commit, str) or not _OID.match(commit.lower()):
        raise LockfileError(f"{where} commit={commit!r} must be a full git object id (40 or 64 hex digits).")
    return LockedCommit(repo_id, commit.lower(), version, revision)


def _check_keys(value: object, allowed: set[str], required: set[str], where: str) -> None:
    if not isinstance(value, dict):
        raise LockfileError(f"{where} must be a JSON object, got {value!r}.")
    unknown, missing = set(value) - allowed, required - set(value)
    if unknown or missing:
        problem = f"unknown keys {sorted(unknown)}" if unknown else f"missing keys {sorted(missing)}"
        raise LockfileError(f"{where} has {problem}; its keys are {', '.join(sorted(allowed))}.")
