"""Kernels from local directories in the Hub layout (`<repo>/build/<variant>/`).

As in the `kernels` package, the path may also hold the variants itself (`<path>/<variant>/`, e.g.
a build output) or be one variant (with `__init__.py` or `metadata.json`, no `build/`).
Local code is the user's own: no trust gate and no digest check (it is edited in place).

>>> import tempfile
>>> repo = Path(tempfile.mkdtemp())
>>> (repo / "build" / "torch-universal").mkdir(parents=True)
>>> _ = (repo / "build" / "torch-universal" / "__init__.py").write_text("def twice(x):\\n    return 2 * x\\n")
>>> load_local(repo).twice(21)
42
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from ..errors import KernelLoadError
from . import archs
from .deps import KernelDependency, load_dependencies
from .errors import KernelDependencyError
from .importer import KernelSource, import_variant, read_metadata
from .variants import VariantCheck, check_variants, choose_variant, parse_variant, system_info


def variants_folder(repo_path: Path) -> Path:
    """`repo_path/build`, or `repo_path` itself when its subfolders are named like variants."""
    build = Path(repo_path) / "build"
    if build.is_dir():
        return build
    if Path(repo_path).is_dir() and any(parse_variant(p.name) for p in Path(repo_path).iterdir() if p.is_dir()):
        return Path(repo_path)
    raise KernelLoadError(f"Local kernel repo {repo_path} has no build/ directory; expected build/<variant>/__init__.py.")


def list_local_variants(repo_path: Path) -> list[str]:
    """The variant directory names under `repo_path/build` (or `repo_path`, see `variants_folder`)."""
    folder = variants_folder(repo_path)
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def load_local(
    repo_path: str | Path, *, backend: str | None = None, repo_id: str | None = None, check_arch: bool = True,
    load_dependency: Callable[[KernelDependency], ModuleType] | None = None,
) -> ModuleType:
    """Import the variant of the local kernel repo at `repo_path` that fits this system, labelled
    `repo_id (local path)` when it stands in for a Hub repo (`kernel_fx.get_local_kernel` is the public
    form). `repo_path` may also point straight at a variant directory (one holding `__init__.py` or,
    for a zipped build, `metadata.json`). `check_arch=False` skips the device check (see `archs`).
    The kernels it depends on (`kernel-depends`) are loaded by `load_dependency`; without one, such
    a kernel raises `KernelDependencyError`.
    """
    repo_path = Path(repo_path).expanduser().resolve()
    label = f"{repo_id} (local {repo_path})" if repo_id else str(repo_path)
    variant_dir = local_variant_dir(repo_path, backend=backend, label=label)
    variant = variant_dir.name
    metadata = read_metadata(variant_dir)
    where = f"{label} variant {variant}"
    if check_arch:
        archs.check_arch(metadata, where=where)
    dependencies = load_dependencies(metadata, repo_id=repo_id or str(repo_path), where=where,
                                     load=load_dependency or (lambda dep: _no_loader(dep, where)))
    return import_variant(variant_dir, KernelSource(label, variant, str(variant_dir)), dependencies)


def _no_loader(dependency: KernelDependency, where: str) -> ModuleType:
    raise KernelDependencyError(f"{where} depends on {dependency}; load it with kernel_fx.get_local_kernel, which fetches dependencies.")


def local_variant_dir(repo_path: Path, *, backend: str | None = None, label: str | None = None) -> Path:
    """The variant directory of the local repo at `repo_path` that fits this system (the path itself
    when it is one variant)."""
    if _is_variant_dir(repo_path):
        return repo_path
    variant = choose_variant(list_local_variants(repo_path), system_info(backend), where=label or str(repo_path)).name
    return variants_folder(repo_path) / variant


def local_variant_checks(repo_path: str | Path, *, backend: str | None = None) -> list[VariantCheck]:
    """Every variant of the local repo at `repo_path`, judged against this system."""
    repo_path = Path(repo_path).expanduser().resolve()
    if _is_variant_dir(repo_path):
        return [VariantCheck(repo_path.name, None)]
    return check_variants(list_local_variants(repo_path), system_info(backend))


def _is_variant_dir(path: Path) -> bool:
    # A repo root may be a Python package itself (the bundled one is); build/ marks it as a repo.
    # A zipped build has no __init__.py, only metadata.json and its archive.
    has_package = (path / "__init__.py").is_file() or (path / "metadata.json").is_file()
    return has_package and not (path / "build").is_dir()
