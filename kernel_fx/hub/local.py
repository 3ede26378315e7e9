"""Kernels from local directories in the Hub layout (`<repo>/build/<variant>/`)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from ..errors import KernelLoadError
from .importer import KernelSource, import_variant
from .variants import choose_variant, system_info


def list_local_variants(repo_path: Path) -> list[str]:
    """The variant directory names under `repo_path/build`."""
    build = Path(repo_path) / "build"
    if not build.is_dir():
        raise KernelLoadError(f"Local kernel repo {repo_path} has no build/ directory; expected build/<variant>/__init__.py.")
    return sorted(p.name for p in build.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def get_local_kernel(repo_path: str | Path, *, backend: str | None = None) -> ModuleType:
    """Import the variant of the local kernel repo at `repo_path` that fits this system.

    `repo_path` may also point straight at a variant directory (one holding `__init__.py`).
    """
    repo_path = Path(repo_path).expanduser().resolve()
    if (repo_path / "__init__.py").is_file():
        return import_variant(repo_path, KernelSource(str(repo_path), repo_path.name, str(repo_path)))
    system = system_info(backend)
    choice = choose_variant(list_local_variants(repo_path), system, where=str(repo_path))
    variant_dir = repo_path / "build" / choice.name
    return import_variant(variant_dir, KernelSource(str(repo_path), choice.name, str(variant_dir)))
