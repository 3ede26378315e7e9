"""`package`: an AOTInductor `.pt2` that carries its kernels; `load_package`: verify, load, run.

Inside the archive, next to AOTInductor's files (`<name>/data/aotinductor/...`):

    <name>/extra/kernel_fx/lock.json                  the lock of every kernel in the program
    <name>/extra/kernel_fx/report.json                the export's record (report and per-site check)
    <name>/kernel_fx/kernels/<id>/<file>              every file of each kernel whose ops the program calls
                                                      (compiled libraries, or ops registered in Python)

(Kernel files sit outside `extra/`: torch's reader decodes every `extra/` member as UTF-8 text.)

AOTInductor cannot pack a C++ op library (pytorch #145394): the program calls the kernel's ops by
name, so the library must be loaded (`torch.ops.load_library`) before the package. `load_package`
does that after checking every file against the lock; without kernel_fx it is two lines of torch
(README, "Deploy"). A kernel whose ops are registered in Python (`torch.library.custom_op` with a
fake implementation) is imported by `load_package` from its packed, verified files instead; plain
torch cannot run those.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ArgumentTypeError, KernelFxError
from ..hub.importer import KernelSource, import_variant
from .lock import LOCK_VERSION, KernelLock, PackageIntegrityError, verify_unpacked
from .program import export_record

logger = logging.getLogger(__name__)

EXTRA = "extra/kernel_fx"
KERNELS = "kernel_fx/kernels"


def package(program: torch.export.ExportedProgram, path: str | os.PathLike[str], *,
            inductor_configs: dict[str, Any] | None = None) -> Path:
    """Compile `program` (from `kernel_fx.export`) with AOTInductor into `path` (a `.pt2`), with its
    kernel lock, its report, and the files of every compiled-extension kernel it calls; return the path.

    >>> import tempfile, torch, kernel_fx
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(2, 2))
    >>> program = kernel_fx.export(model, (torch.ones(1, 2),))
    >>> path = kernel_fx.package(program, tempfile.mkdtemp() + "/tiny.pt2")   # AOTInductor: seconds
    >>> loaded = kernel_fx.load_package(path)
    >>> torch.testing.assert_close(loaded(torch.ones(1, 2)), model(torch.ones(1, 2)))
    >>> loaded.kernels  # no site, no kernel
    ()
    """
    record = export_record(program)
    path = Path(path)
    if path.suffix != ".pt2":
        raise ArgumentTypeError(f"kernel_fx.package(path={str(path)!r}): AOTInductor packages end in .pt2.")
    path.parent.mkdir(parents=True, exist_ok=True)
    written = Path(torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=inductor_configs))
    with zipfile.ZipFile(written) as archive:
        root = _archive_root(archive.namelist(), written)
    # Appended with zipfile: torch's archive reader reads members by name, so extra members beside
    # AOTInductor's are kept and ignored by it.
    with zipfile.ZipFile(written, "a") as archive:
        archive.writestr(f"{root}/{EXTRA}/lock.json", json.dumps(
            {"version": LOCK_VERSION, "kernels": [k.as_dict() for k in record.kernels]}, indent=2))
        archive.writestr(f"{root}/{EXTRA}/report.json", json.dumps(record.to_dict(), indent=2, default=str))
        for kernel in record.kernels:
            if kernel.packed:
                folder = Path(kernel.folder or "")
                for rel in kernel.files:
                    archive.write(folder / rel, f"{root}/{KERNELS}/{kernel.kernel_id}/{rel}")
    return written


def library_members(path: str | os.PathLike[str]) -> list[str]:
    """The archive names of the op libraries in a kernel_fx package, in load order (for plain torch)."""
    with zipfile.ZipFile(path) as archive:
        root = _archive_root(archive.namelist(), Path(path))
        lock = _read_lock(archive, root, path)
    return [f"{root}/{KERNELS}/{k.kernel_id}/{lib}" for k in lock if k.packed for lib in k.libraries]


@dataclass
class DeployedModel:
    """A loaded package: call it like the model. `kernels` are the locks it was checked against,
    `libraries` the op libraries loaded for it (or found already loaded)."""

    runner: Callable[..., Any]
    kernels: tuple[KernelLock, ...]
    libraries: tuple[Path, ...]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.runner(*args, **kwargs)


def load_package(path: str | os.PathLike[str], *, unpack_to: str | os.PathLike[str] | None = None) -> DeployedModel:
    """Load a package `kernel_fx.package` wrote: unpack its kernel files (under `unpack_to`, default a
    new folder in the temp dir, so a library loaded in this process is never overwritten), refuse any
    file that is missing, not in the package's lock, or whose sha256 differs from it
    (`PackageIntegrityError` naming the file), load their op libraries (and import kernels whose ops
    are registered in Python), then the AOTInductor program.

    The lock travels in the same archive: this catches a file changed after packaging, not a package
    rewritten with a matching lock (compare `DeployedModel.kernels` with a lock you trust for that).

    See `package` for a run; with kernels:

        model = kernel_fx.load_package("model.pt2")   # PackageIntegrityError if a kernel file was changed
        logits = model(input_ids)
    """
    path = Path(path)
    if not path.is_file():
        raise KernelFxError(f"kernel_fx.load_package: no package at {str(path)!r}.")
    with zipfile.ZipFile(path) as archive:
        root = _archive_root(archive.namelist(), path)
        kernels = _read_lock(archive, root, path)
        base = Path(unpack_to) if unpack_to is not None else Path(tempfile.mkdtemp(prefix="kernel_fx_pkg_"))
        libraries = []
        for kernel in kernels:
            if not kernel.packed:
                continue
            folder = base / kernel.kernel_id
            _unpack(archive, f"{root}/{KERNELS}/{kernel.kernel_id}/", kernel, folder, where=str(path))
            verify_unpacked(kernel, folder, where=str(path))
            libraries += [_load_library(folder / lib, kernel) for lib in kernel.libraries]
            _register_python_ops(folder, kernel)
    runner = torch._inductor.aoti_load_package(str(path))
    return DeployedModel(runner, kernels, tuple(libraries))


def _unpack(archive: zipfile.ZipFile, prefix: str, kernel: KernelLock, folder: Path, *, where: str) -> None:
    """Write the kernel's locked files to `folder`; a member the lock does not name (code nobody
    pinned, or a path that would leave the folder) is refused, not written."""
    members = [n[len(prefix):] for n in archive.namelist() if n.startswith(prefix) and not n.endswith("/")]
    unexpected = sorted(set(members) - set(kernel.files))
    if unexpected:
        raise PackageIntegrityError(f"Kernel {kernel.repo} ({kernel.variant}) in {where} has files its lock does not name: "
                                    f"{', '.join(unexpected)}. Refusing to load it: package the program again.")
    for rel in members:
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(archive.read(prefix + rel))


def _load_library(library: Path, kernel: KernelLock) -> Path:
    if kernel.ops and all(_registered(op) for op in kernel.ops):
        # A namespace registers once per process: a library already loaded (e.g. by importing the kernel) serves.
        logger.info("kernel_fx: ops %s of %s are already registered; not loading %s again", kernel.ops, kernel.repo, library)
        return library
    torch.ops.load_library(str(library))
    return library


def _register_python_ops(folder: Path, kernel: KernelLock) -> None:
    """Import the kernel's package (its verified, unpacked files) when its libraries did not
    register every op the program calls: its Python registers them."""
    if all(_registered(op) for op in kernel.ops):
        return
    source = KernelSource(kernel.repo, kernel.variant, str(folder), revision=kernel.revision, commit=kernel.commit)
    import_variant(folder, source)
    missing = [op for op in kernel.ops if not _registered(op)]
    if missing:
        raise KernelFxError(f"Kernel {kernel.repo} ({kernel.variant}) did not register {missing}, which the program calls, "
                            f"when its libraries {list(kernel.libraries)} were loaded and its package imported from {folder}.")


def _registered(op: str) -> bool:
    namespace, name = op.split("::")
    try:
        getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _read_lock(archive: zipfile.ZipFile, root: str, path: os.PathLike[str] | str) -> tuple[KernelLock, ...]:
    name = f"{root}/{EXTRA}/lock.json"
    try:
        data = json.loads(archive.read(name))
    except KeyError:
        raise KernelFxError(f"{str(path)!r} has no {name}: it was not written by kernel_fx.package "
                            "(load it with torch._inductor.aoti_load_package).") from None
    if data.get("version") != LOCK_VERSION:
        raise KernelFxError(f"{str(path)!r} has kernel lock version {data.get('version')!r}; this kernel_fx reads version {LOCK_VERSION}.")
    return tuple(KernelLock.from_dict(k) for k in data["kernels"])


def _archive_root(names: list[str], path: Path) -> str:
    roots = {n.split("/", 1)[0] for n in names if "/" in n}
    if len(roots) != 1:
        raise KernelFxError(f"{str(path)!r} is not a single-model .pt2 archive (top-level folders: {sorted(roots)}).")
    return roots.pop()


__all__ = ["DeployedModel", "PackageIntegrityError", "library_members", "load_package", "package"]
