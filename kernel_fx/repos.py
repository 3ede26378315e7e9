"""Where a layer's kernel comes from: a Hub repo, a local directory, or a lock file.

Repositories are frozen dataclasses, so they are hashable mapping values and print clearly:

>>> LayerRepository("kernels-community/activation", layer_name="SiluAndMul", version=1)
LayerRepository(repo_id='kernels-community/activation', layer_name='SiluAndMul', revision=None, version=1, trust_remote_code=False)

Any other hashable object with a `.load()` that returns a layer class works as a repository too.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from types import ModuleType
from typing import Protocol, runtime_checkable

from torch import nn

from .errors import KernelLoadError, MappingError
from .hub.trust import check_trust_setting


@runtime_checkable
class Repository(Protocol):
    """Anything that can produce a kernel layer class."""

    def load(self) -> type[nn.Module]: ...


@dataclass(frozen=True)
class LayerRepository:
    """Layer `layer_name` of Hub kernel repo `repo_id`, at a `revision` or `version` (branch `v<N>`).

    With neither, revision `main` is used and the decision is flagged as unpinned.
    `trust_remote_code`: True, or the repo ids / owners whose code may run on import (see
    `kernel_fx.hub.trust`).
    """

    repo_id: str
    _: KW_ONLY
    layer_name: str
    revision: str | None = None
    version: int | None = None
    trust_remote_code: bool | tuple[str, ...] = False

    def __post_init__(self) -> None:
        _check_str("repo_id", self.repo_id, "'org/name'")
        _check_str("layer_name", self.layer_name, "'SiluAndMul'")
        check_trust_setting(self.trust_remote_code)
        if not isinstance(self.trust_remote_code, bool):  # a list of repo ids; kept hashable
            object.__setattr__(self, "trust_remote_code", tuple(self.trust_remote_code))
        if self.revision is not None and self.version is not None:
            raise MappingError(
                f"LayerRepository({self.repo_id!r}) got revision={self.revision!r} and version={self.version!r}; give one of them."
            )
        if self.version is not None and (not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 0):
            raise MappingError(f"LayerRepository({self.repo_id!r}) version={self.version!r} must be a non-negative int (branch v<N>).")

    @property
    def unpinned(self) -> bool:
        return self.revision is None and self.version is None

    def load(self, backend: str | None = None) -> type[nn.Module]:
        from .hub.api import get_kernel

        kernel = get_kernel(
            self.repo_id,
            revision=self.revision,
            version=self.version,
            backend=backend,
            trust_remote_code=self.trust_remote_code,
        )
        return layer_from_kernel(kernel, self.layer_name, self.repo_id)


@dataclass(frozen=True)
class LocalLayerRepository:
    """Layer `layer_name` of a kernel repo in a local directory (containing `build/<variant>/`)."""

    repo_path: Path
    _: KW_ONLY
    layer_name: str

    def __post_init__(self) -> None:
        if not isinstance(self.repo_path, (str, Path)):
            raise MappingError(f"LocalLayerRepository repo_path={self.repo_path!r} must be a str or Path.")
        object.__setattr__(self, "repo_path", Path(self.repo_path))
        _check_str("layer_name", self.layer_name, "'SiluAndMul'")

    def load(self, backend: str | None = None) -> type[nn.Module]:
        from .hub.local import get_local_kernel

        kernel = get_local_kernel(self.repo_path, backend=backend)
        return layer_from_kernel(kernel, self.layer_name, str(self.repo_path))


@dataclass(frozen=True)
class LockedLayerRepository:
    """Layer `layer_name` of `repo_id` pinned by a lock file, verified before import."""

    repo_id: str
    _: KW_ONLY
    layer_name: str
    lockfile: Path | None = None

    def __post_init__(self) -> None:
        _check_str("repo_id", self.repo_id, "'org/name'")
        _check_str("layer_name", self.layer_name, "'SiluAndMul'")
        if self.lockfile is not None:
            object.__setattr__(self, "lockfile", Path(self.lockfile))

    def load(self, backend: str | None = None) -> type[nn.Module]:
        from .hub.api import load_kernel

        kernel = load_kernel(self.repo_id, lockfile=self.lockfile, backend=backend)
        return layer_from_kernel(kernel, self.layer_name, self.repo_id)


AnyRepository = LayerRepository | LocalLayerRepository | LockedLayerRepository | Repository
OUR_REPOSITORIES = (LayerRepository, LocalLayerRepository, LockedLayerRepository)


def layer_from_kernel(kernel: ModuleType, layer_name: str, where: str) -> type[nn.Module]:
    """Class `layer_name` from the kernel's `layers`, or an error listing the layers it has."""
    layers = getattr(kernel, "layers", None)
    if layers is None:
        raise KernelLoadError(f"Kernel {where} exports no `layers`; it cannot provide layer {layer_name!r}.")
    layer = getattr(layers, layer_name, None)
    if layer is None:
        available = sorted(n for n, v in vars(layers).items() if isinstance(v, type) and issubclass(v, nn.Module))
        raise KernelLoadError(
            f"Kernel {where} has no layer {layer_name!r}; its layers are: {', '.join(available) or 'none'}."
        )
    return layer


def load_layer(repo: AnyRepository, backend: str) -> type[nn.Module]:
    """Load `repo`'s layer class; our repositories pick the build variant for `backend`."""
    if isinstance(repo, OUR_REPOSITORIES):
        return repo.load(backend=backend)
    return repo.load()


def check_repository(repo: object, where: str) -> None:
    """Raise unless `repo` is a hashable object with a `.load()`."""
    if not callable(getattr(repo, "load", None)):
        raise MappingError(
            f"Mapping value {repo!r} for {where} is not a repository; use LayerRepository, "
            "LocalLayerRepository, LockedLayerRepository or an object with .load()."
        )
    try:
        hash(repo)
    except TypeError as exc:
        raise MappingError(f"Repository {repo!r} for {where} must be hashable: {exc}.") from exc


def _check_str(field: str, value: object, example: str) -> None:
    if not isinstance(value, str) or not value:
        raise MappingError(f"{field}={value!r} must be a non-empty string such as {example}.")
