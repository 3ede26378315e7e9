"""The kernel lock a package carries: per kernel, repo, commit, variant and the sha256 of every file
of its variant, plus the op libraries among those files and the ops the program calls from them.

>>> lock = KernelLock(repo="org/act", variant="torch-cpu", commit=None, revision=None, kernel_id="act",
...                   files={"__init__.py": "ab" * 32}, libraries=(), ops=())
>>> KernelLock.from_dict(lock.as_dict()) == lock
True
>>> lock.compiled, lock.packed
(False, False)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import KernelFxError
from ..hub.importer import KernelSource, read_metadata
from ..hub.integrity import hash_files, sha256_file

LOCK_VERSION = 1
LIBRARY_SUFFIXES = (".so", ".pyd", ".dylib")


class PackageIntegrityError(KernelFxError):
    """A file in a kernel_fx package differs from the lock the package carries."""


@dataclass(frozen=True)
class KernelLock:
    """One kernel variant a program uses.

    Attributes:
        repo: the Hub repo id, or the local path, the kernel was loaded from.
        variant: the build variant (`torch213-cxx11-cpu-x86_64-linux`, `torch-cpu`, ...).
        commit: the resolved Hub commit (None for a local repository).
        revision: the revision asked for (branch, tag, `v1`), if any.
        kernel_id: the variant's metadata `id` (the folder its files have in the package).
        files: `{relative path: sha256}` of every file of the variant.
        libraries: the relative paths of its compiled op libraries (`.so`); empty for pure Python (a kernel
            registering its ops with `torch.library` in Python has none: `load_package` imports it).
        ops: the custom ops (`namespace::name`) the program calls from this kernel.
        folder: where the variant's files were when exported (not written to the lock).
    """

    repo: str
    variant: str
    commit: str | None
    revision: str | None
    kernel_id: str
    files: Mapping[str, str]
    libraries: tuple[str, ...]
    ops: tuple[str, ...]
    folder: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", MappingProxyType(dict(self.files)))
        missing = [lib for lib in self.libraries if lib not in self.files]
        if missing:
            raise ValueError(f"KernelLock libraries {missing} are not among its files {sorted(self.files)}.")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KernelLock) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash((self.repo, self.variant, self.commit, tuple(sorted(self.files.items()))))

    @property
    def compiled(self) -> bool:
        """Whether the program calls ops from this kernel's compiled libraries."""
        return bool(self.libraries) and bool(self.ops)

    @property
    def packed(self) -> bool:
        """Whether the program calls ops this kernel registers (from a library or from Python): then
        its files travel in the package, and the ops must be registered before the program loads."""
        return bool(self.ops)

    @classmethod
    def of(cls, source: KernelSource, ops: tuple[str, ...]) -> KernelLock:
        """The lock of the variant `source` names, hashing its files now."""
        variant_dir = Path(source.path)
        files = hash_files(variant_dir)
        libraries = tuple(rel for rel in files if rel.endswith(LIBRARY_SUFFIXES))
        kernel_id = str(read_metadata(variant_dir).get("id") or variant_dir.parent.parent.name)
        return cls(source.repo, source.variant, source.commit, source.revision, kernel_id, files, libraries, tuple(sorted(ops)),
                   str(variant_dir.resolve()))

    def as_dict(self) -> dict[str, Any]:
        return {"repo": self.repo, "variant": self.variant, "commit": self.commit, "revision": self.revision,
                "kernel_id": self.kernel_id, "files": dict(sorted(self.files.items())), "libraries": list(self.libraries),
                "ops": list(self.ops)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KernelLock:
        return cls(data["repo"], data["variant"], data.get("commit"), data.get("revision"), data["kernel_id"],
                   dict(data["files"]), tuple(data.get("libraries", ())), tuple(data.get("ops", ())))


def verify_unpacked(lock: KernelLock, folder: Path, *, where: str) -> None:
    """Raise `PackageIntegrityError` naming every file under `folder` that is missing or whose
    sha256 differs from `lock`."""
    problems = []
    for rel, expected in sorted(lock.files.items()):
        path = folder / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif sha256_file(path) != expected:
            problems.append(f"{rel} has sha256 {sha256_file(path)}, the lock says {expected}")
    if problems:
        raise PackageIntegrityError(
            f"Kernel {lock.repo} ({lock.variant}) in {where} differs from its lock: {'; '.join(problems)}. "
            "Refusing to load it: the package was modified after kernel_fx.package wrote it; package the program again."
        )
