"""What a caller asked for and what it pinned to: `requested` names, `Resolved` commits, newer versions.

Shared by `resolve` (cache or Hub, the policy) and `remote` (the Hub requests), so that neither
imports the other to reach it.

>>> str(Resolved("org/act", "kernel", "v1", "0123456789abcdef0123456789abcdef01234567", ("torch-cpu",)))
'org/act@v1 (commit 0123456789ab)'
>>> requested(None, 2), requested("dev", None), requested(None, None)
('v2', 'dev', 'main')
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resolved:
    """A repo revision pinned to its commit, with the variant names known there."""

    repo_id: str
    repo_type: str
    revision: str
    commit: str
    variants: tuple[str, ...]
    from_cache: bool = False

    def __str__(self) -> str:
        if self.revision == self.commit:
            return f"{self.repo_id}@{self.commit[:12]}"
        return f"{self.repo_id}@{self.revision} (commit {self.commit[:12]})"


def requested(revision: str | None, version: int | None) -> str:
    """The revision a caller asked for, as a ref name: `v<N>`, the revision, or `main`."""
    if version is not None:
        return f"v{version}"
    return revision or "main"


def announce_newer(repo_id: str, version: int, newest: int) -> None:
    """Log, once per process and repo, that a version newer than the one requested exists."""
    if newest > version:
        _log_newer(repo_id, version, newest)


@functools.cache  # the cache is the "once": a repeated call does not log again
def _log_newer(repo_id: str, version: int, newest: int) -> None:
    logger.warning(
        "kernel_fx: %s has a newer version (v%d) than the requested v%d; pass version=%d to use it.",
        repo_id, newest, version, newest,
    )
