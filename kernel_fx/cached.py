"""The kernels in the local Hub cache, by repo and commit, with their downloaded variants (`kernels`
0.19's `cache ls`). Read from the cache layout only: nothing is imported or fetched.

>>> import tempfile
>>> from pathlib import Path
>>> cache = Path(tempfile.mkdtemp())
>>> commit = "ab" * 20
>>> (cache / "kernels--org--act" / "snapshots" / commit / "build" / "torch-cpu").mkdir(parents=True)
>>> (cache / "kernels--org--act" / "refs").mkdir()
>>> _ = (cache / "kernels--org--act" / "refs" / "v1").write_text(commit)
>>> [(k.repo_id, k.refs, k.variants) for k in cached_kernels(cache)]
[('org/act', ('v1',), ('torch-cpu',))]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .hub import cache as hub_cache
from .hub import env

_PREFIXES = {"kernels--": "kernel", "models--": "model"}


@dataclass(frozen=True)
class CachedKernel:
    """One cached commit of a kernel repo: the branches and tags that point at it, its variants, its size."""

    repo_type: str
    repo_id: str
    commit: str
    refs: tuple[str, ...]
    variants: tuple[str, ...]
    size: int

    def as_dict(self) -> dict:
        return {"repo_type": self.repo_type, "repo_id": self.repo_id, "commit": self.commit, "refs": list(self.refs),
                "variants": list(self.variants), "size_on_disk": self.size}


def cached_kernels(cache_dir: Path | None = None) -> list[CachedKernel]:
    """Every commit with a `build/` variant in `cache_dir` (default: kernel_fx's cache), sorted by repo."""
    root = Path(cache_dir) if cache_dir is not None else env.hub_cache_dir()
    found = []
    for folder in sorted(root.iterdir()) if root.is_dir() else ():
        prefix = next((p for p in _PREFIXES if folder.name.startswith(p)), None)
        if prefix is None or not (folder / "snapshots").is_dir():
            continue
        repo_id = folder.name[len(prefix):].replace("--", "/", 1)
        refs = hub_cache.cached_refs(folder)
        for snapshot in sorted((folder / "snapshots").iterdir()):
            variants = hub_cache.cached_variants(folder, snapshot.name)
            if variants:
                pointing = tuple(sorted(r for r, c in refs.items() if c == snapshot.name))
                found.append(CachedKernel(_PREFIXES[prefix], repo_id, snapshot.name, pointing, tuple(variants), _size(snapshot / "build")))
    return found


def _size(folder: Path) -> int:
    # snapshot files are symlinks into blobs/: count what they point at
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
