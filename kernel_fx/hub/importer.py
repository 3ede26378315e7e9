"""Import a kernel variant directory as a package under its metadata `id`.

Each variant path is imported once per process and cached; two versions of one kernel carry
different ids (or paths), so they coexist in `sys.modules`.

Where the package is, as in Hugging Face `kernels` 0.19: `<variant>/__init__.py`; else
`<variant>/<name>/__init__.py` (`name` from the metadata, `-` read as `_`); or, for a zipped build
(`"build-layout": "zip"`), the root of `<variant>/<id>.zip`, unpacked first (see `archives`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..errors import KernelLoadError
from . import archives, env
from .deps import providing

logger = logging.getLogger(__name__)

SOURCE_ATTR = "__kernel_fx_source__"
_KERNEL_NAME = re.compile(r"^[a-z][-a-z0-9]*[a-z0-9]$")  # the kernel names `kernels` accepts

_imported: dict[Path, ModuleType] = {}
_lock = threading.RLock()


@dataclass(frozen=True)
class KernelSource:
    """Where an imported kernel came from, for reports: repo (or local path), commit, variant."""

    repo: str
    variant: str
    path: str
    revision: str | None = None
    commit: str | None = None
    unpinned: bool = False

    def __str__(self) -> str:
        if self.commit:
            return f"{self.repo}@{self.commit[:12]}"
        if self.revision:
            return f"{self.repo}@{self.revision}"
        return self.repo


def read_metadata(variant_dir: Path) -> dict:
    """The variant's `metadata.json` as a dict ({} when absent)."""
    path = variant_dir / "metadata.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KernelLoadError(f"Cannot read {path}: {exc}.") from exc


@dataclass(frozen=True)
class Package:
    """Where a variant's Python package is: its `__init__.py` and the folders its submodules come from."""

    init: Path
    search: tuple[Path, ...]


def find_package(variant_dir: Path, metadata: dict, *, label: object = None) -> Package:
    """The package of `variant_dir` in any layout (see the module docstring), or a `KernelLoadError`."""
    where = label or variant_dir
    if archives.layout(metadata, where) == "zip":
        unpacked = archives.unpacked(variant_dir, metadata, root=env.unpack_root())
        return Package(unpacked / "__init__.py", (variant_dir, unpacked))  # `kernels` searches the variant first
    candidates = [variant_dir]
    if isinstance(metadata.get("name"), str) and _KERNEL_NAME.match(metadata["name"]):
        candidates.append(variant_dir / metadata["name"].replace("-", "_"))
    for folder in candidates:
        if (folder / "__init__.py").is_file():
            return Package(folder / "__init__.py", (folder,))
    tried = " or ".join(str(c / "__init__.py") for c in candidates)
    raise KernelLoadError(f"Kernel {where} has no package: no {tried}, and its metadata names no zipped build.")


def module_name_for(variant_dir: Path, metadata: dict, package: Package | None = None) -> str:
    """A module name unique to this variant directory, based on metadata `id` where present."""
    digest = hashlib.sha256(str(variant_dir).encode()).hexdigest()[:10]
    base = metadata.get("id") or f"kernel_fx_kernel_{digest}"
    # Suffixed: the `kernels` package (which transformers brings) imports a kernel under its bare
    # id and refuses one it finds in sys.modules without its own records, so the two loaders must
    # not share a name when one process uses both.
    base = "".join(c if c.isalnum() or c == "_" else "_" for c in str(base)) + "__kfx"
    existing = sys.modules.get(base)
    home = package.init.parent if package is not None else variant_dir
    if existing is None or Path(getattr(existing, "__file__", "")).parent == home:
        return base
    return f"{base}_{digest}"  # the same id from another path: another version of the kernel


def imported(variant_dir: Path) -> ModuleType | None:
    """The module already imported from `variant_dir` in this process, if any."""
    return _imported.get(Path(variant_dir).resolve())


def import_variant(variant_dir: Path, source: KernelSource, dependencies: Mapping[str, ModuleType] | None = None) -> ModuleType:
    """Import `variant_dir/__init__.py` as a package and tag it with `source`; while its code runs,
    `get_kernel_dep` hands it `dependencies` ({repo id: module}, see `deps`).

    A failing import leaves no half-imported modules behind and names repo, revision, variant
    and the original exception.
    """
    variant_dir = Path(variant_dir).resolve()
    with _lock:
        module = _imported.get(variant_dir)
        if module is not None:
            return module
        metadata = read_metadata(variant_dir)
        package = find_package(variant_dir, metadata, label=f"{source} variant {source.variant!r}")
        name = module_name_for(variant_dir, metadata, package)
        with providing(dependencies or {}):
            module = _exec_package(name, package, source)
        setattr(module, SOURCE_ATTR, source)
        _imported[variant_dir] = module
        logger.debug("imported kernel %s (%s) as %s", source, source.variant, name)
        return module


def _exec_package(name: str, package: Package, source: KernelSource) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, package.init, submodule_search_locations=[str(p) for p in package.search])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    before = set(sys.modules)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        for leftover in set(sys.modules) - before:
            if leftover == name or leftover.startswith(name + "."):
                del sys.modules[leftover]
        revision = source.commit or source.revision or "local"
        raise KernelLoadError(
            f"Importing kernel {source.repo} at revision {revision}, variant {source.variant!r} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return module


def source_of(obj: object) -> KernelSource | None:
    """The `KernelSource` of a kernel module or of a class defined in one."""
    module_name = obj.__name__ if isinstance(obj, ModuleType) else getattr(obj, "__module__", "") or ""
    while module_name:
        module = sys.modules.get(module_name)
        source = getattr(module, SOURCE_ATTR, None)
        if source is not None:
            return source
        module_name = module_name.rpartition(".")[0]
    return None
