"""Read-only look-ups in the huggingface_hub cache, by its documented layout.

    <cache>/<type>s--<org>--<name>/refs/<branch or tag>      -> commit sha
    <cache>/<type>s--<org>--<name>/snapshots/<commit>/build/<variant>/...

Why not huggingface_hub's own functions: this is the warm path of every load, and importing the
client's download module costs ~170 ms, more than the whole load budget. Only huggingface_hub
writes here; kernel_fx only reads.

>>> repo_folder(Path("/c"), "kernel", "org/act").as_posix()
'/c/kernels--org--act'
>>> is_commit("0123456789abcdef0123456789abcdef01234567"), is_commit("main")
(True, False)
>>> branch_version("v2"), branch_version("main")
(2, None)
"""

from __future__ import annotations

import re
from pathlib import Path

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_VERSION_REF = re.compile(r"^v(\d+)$")


def is_commit(revision: str | None) -> bool:
    """True for a full 40-hex commit sha, the only revision that can never move."""
    return bool(revision) and _COMMIT.match(revision) is not None


def repo_folder(cache: Path, repo_type: str, repo_id: str) -> Path:
    """The cache folder of one repo."""
    return cache / f"{repo_type}s--{repo_id.replace('/', '--')}"


def cached_refs(repo: Path) -> dict[str, str]:
    """Every cached branch or tag of `repo` (a `repo_folder`) and the commit it pointed to."""
    refs_dir = repo / "refs"
    if not refs_dir.is_dir():
        return {}
    refs = {}
    for path in refs_dir.rglob("*"):
        if path.is_file():
            refs[path.relative_to(refs_dir).as_posix()] = path.read_text().strip()
    return refs


def cached_commit(repo: Path, revision: str) -> str | None:
    """The cached commit of `revision` (a sha, branch or tag), or None when it is not cached."""
    if is_commit(revision):
        return revision if (repo / "snapshots" / revision).is_dir() else None
    ref = repo / "refs" / revision
    if not ref.is_file():
        return None
    commit = ref.read_text().strip()
    return commit if (repo / "snapshots" / commit).is_dir() else None


def branch_version(ref: str) -> int | None:
    """N for a version branch `v<N>`, else None: versions of a kernel are its `v<N>` branches."""
    match = _VERSION_REF.match(ref)
    return int(match[1]) if match else None


def cached_versions(repo: Path) -> dict[int, str]:
    """The cached `v<N>` branches of `repo` as {N: commit}."""
    refs = cached_refs(repo)
    return {branch_version(name): commit for name, commit in refs.items() if branch_version(name) is not None}


def cached_variants(repo: Path, commit: str) -> list[str]:
    """Names of the variants of `commit` present in the cache (only those once downloaded)."""
    build = repo / "snapshots" / commit / "build"
    if not build.is_dir():
        return []
    return sorted(p.name for p in build.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def variant_dir(repo: Path, commit: str, variant: str) -> Path:
    """Where variant `variant` of `commit` lives in the cache (it may not exist)."""
    return repo / "snapshots" / commit / "build" / variant
