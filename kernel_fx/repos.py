"""Where a layer's kernel comes from: a Hub repo, a local directory, or a lock file (and, deprecated as in
`kernels`, a function of one of those).

Repositories are dataclasses hashed and compared by their fields, so they are mapping values and print
clearly; they are ordinary objects otherwise, so code written for `kernels` can replace `load` on an
instance (tests stub loading that way):

>>> LayerRepository("kernels-community/activation", layer_name="SiluAndMul", version=1)
LayerRepository(repo_id='kernels-community/activation', layer_name='SiluAndMul', revision=None, version=1, trust_remote_code=False, check_arch=True)

Any other hashable object with a `.load()` that returns a layer class works as a repository too.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from torch import nn

from .errors import LayerNotFoundError, MappingError
from .hub.trust import check_trust_setting


@runtime_checkable
class Repository(Protocol):
    """Anything that can produce a kernel layer class."""

    def load(self) -> type[nn.Module]: ...


@dataclass(unsafe_hash=True)
class LayerRepository:
    """Layer `layer_name` of Hub kernel repo `repo_id`, at a `revision` or `version` (branch `v<N>`).

    With neither, revision `main` is used and the decision is flagged as unpinned (`kernels`
    requires one). `trust_remote_code`: True, or the repo ids / owners whose code may run on import
    (see `kernel_fx.hub.trust`). `user_agent` goes with the Hub requests; `check_arch=False` loads a
    build whose metadata archs omit this GPU (as in `kernels` 0.19).
    """

    repo_id: str
    _: KW_ONLY
    layer_name: str
    revision: str | None = None
    version: int | None = None
    trust_remote_code: bool | tuple[str, ...] = False
    user_agent: str | dict | None = field(default=None, compare=False, repr=False)  # not part of what is loaded
    check_arch: bool = True

    def __post_init__(self) -> None:
        _check_str("repo_id", self.repo_id, "'org/name'")
        _check_str("layer_name", self.layer_name, "'SiluAndMul'")
        check_trust_setting(self.trust_remote_code)
        _check_bool("check_arch", self.check_arch)
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

    def kernel(self, backend: str | None = None) -> ModuleType:
        """The kernel module, downloaded and imported (see `kernel_fx.get_kernel`)."""
        from .hub.api import get_kernel

        return get_kernel(self.repo_id, revision=self.revision, version=self.version, backend=backend,
                          trust_remote_code=self.trust_remote_code, user_agent=self.user_agent, check_arch=self.check_arch)

    def load(self, backend: str | None = None) -> type[nn.Module]:
        return layer_from_kernel(self.kernel(backend), self.layer_name, self.repo_id)


@dataclass(unsafe_hash=True)
class LocalLayerRepository:
    """Layer `layer_name` of a kernel repo in a local directory (containing `build/<variant>/`)."""

    repo_path: Path
    _: KW_ONLY
    layer_name: str
    check_arch: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.repo_path, (str, Path)):
            raise MappingError(f"LocalLayerRepository repo_path={self.repo_path!r} must be a str or Path.")
        object.__setattr__(self, "repo_path", Path(self.repo_path))
        _check_str("layer_name", self.layer_name, "'SiluAndMul'")
        _check_bool("check_arch", self.check_arch)

    def kernel(self, backend: str | None = None) -> ModuleType:
        """The kernel module, imported from the directory (see `kernel_fx.get_local_kernel`)."""
        from .hub.api import get_local_kernel

        return get_local_kernel(self.repo_path, backend=backend, check_arch=self.check_arch)

    def load(self, backend: str | None = None) -> type[nn.Module]:
        return layer_from_kernel(self.kernel(backend), self.layer_name, str(self.repo_path))


@dataclass(unsafe_hash=True)
class LockedLayerRepository:
    """Layer `layer_name` of `repo_id` pinned by a lock file, verified before import.

    The lock (`lockfile`, else the nearest `kernel-fx.lock` or `kernels.lock` from the working
    directory up) is read when the repository is made, as in `kernels`: a lock that cannot be read
    or does not lock `repo_id` raises `LockfileError` (a `ValueError`) here, never a quiet fallback
    later. Loading downloads the locked build when it is not cached, unless `HF_HUB_OFFLINE` is set.

    >>> LockedLayerRepository("org/act", layer_name="SiluAndMul", lockfile="/nonexistent/kernels.lock")
    Traceback (most recent call last):
    ...
    kernel_fx.hub.errors.LockfileError: Lock file /nonexistent/kernels.lock does not exist; create it with `kernel-fx lock`.
    """

    repo_id: str
    _: KW_ONLY
    layer_name: str
    lockfile: Path | None = None
    trust_remote_code: bool | tuple[str, ...] = False
    check_arch: bool = True
    locked: tuple = field(init=False, repr=False)  # this repo's entries of the lock file, read at construction
    lock_path: Path = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_str("repo_id", self.repo_id, "'org/name'")
        _check_str("layer_name", self.layer_name, "'SiluAndMul'")
        check_trust_setting(self.trust_remote_code)
        _check_bool("check_arch", self.check_arch)
        if not isinstance(self.trust_remote_code, bool):
            object.__setattr__(self, "trust_remote_code", tuple(self.trust_remote_code))
        if self.lockfile is not None:
            object.__setattr__(self, "lockfile", Path(self.lockfile))
        from .hub.locks import locked_entries

        path, entries = locked_entries(self.repo_id, self.lockfile)
        object.__setattr__(self, "lock_path", path)
        object.__setattr__(self, "locked", entries)

    def kernel(self, backend: str | None = None) -> ModuleType:
        """The locked kernel module (see `kernel_fx.get_locked_kernel`); `LOCAL_KERNELS` does not apply."""
        from .hub import env
        from .hub.api import load_local_kernel, load_locked

        override = env.local_kernels(locked=True).get(self.repo_id)
        if override is not None:
            return load_local_kernel(override, backend=backend, repo_id=self.repo_id, check_arch=self.check_arch)
        return load_locked(self.repo_id, self.lock_path, self.locked, backend=backend, check_arch=self.check_arch, download=True)

    def load(self, backend: str | None = None) -> type[nn.Module]:
        return layer_from_kernel(self.kernel(backend), self.layer_name, self.repo_id)


# -- functions (deprecated in `kernels`, kept for code written against it) ---------------------


@dataclass(unsafe_hash=True)
class FuncRepository:
    """Deprecated (as in `kernels`): function `func_name` at the top level of Hub kernel repo `repo_id`,
    wrapped into a kernel layer whose forward calls it. Prefer `LayerRepository`."""

    repo_id: str
    _: KW_ONLY
    func_name: str
    revision: str | None = None
    version: int | None = None
    trust_remote_code: bool | tuple[str, ...] = False
    check_arch: bool = True

    def __post_init__(self) -> None:
        _deprecated(type(self).__name__, "LayerRepository")
        _check_str("func_name", self.func_name, "'silu_and_mul'")
        self._source()  # validates the rest
        if not isinstance(self.trust_remote_code, bool):
            object.__setattr__(self, "trust_remote_code", tuple(self.trust_remote_code))

    def _source(self) -> LayerRepository:
        return LayerRepository(self.repo_id, layer_name=self.func_name, revision=self.revision, version=self.version,
                               trust_remote_code=self.trust_remote_code, check_arch=self.check_arch)

    @property
    def unpinned(self) -> bool:
        return self.revision is None and self.version is None

    def load(self, backend: str | None = None) -> type[nn.Module]:
        return func_layer(self._source().kernel(backend), self.func_name, self.repo_id)


@dataclass(unsafe_hash=True)
class LocalFuncRepository:
    """Deprecated (as in `kernels`): function `func_name` of a kernel repo in a local directory.

    >>> import tempfile, torch, warnings
    >>> from kernel_fx.validation import kernel_problem
    >>> repo = Path(tempfile.mkdtemp())
    >>> (repo / "build" / "torch-universal").mkdir(parents=True)
    >>> _ = (repo / "build" / "torch-universal" / "__init__.py").write_text("def twice(x):\\n    return 2 * x\\n")
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore", DeprecationWarning)
    ...     layer = LocalFuncRepository(repo, func_name="twice").load()
    >>> layer.forward(None, torch.tensor(21.0)).item()
    42.0
    """

    repo_path: Path
    _: KW_ONLY
    func_name: str
    check_arch: bool = True

    def __post_init__(self) -> None:
        _deprecated(type(self).__name__, "LocalLayerRepository")
        _check_str("func_name", self.func_name, "'silu_and_mul'")
        object.__setattr__(self, "repo_path", self._source().repo_path)

    def _source(self) -> LocalLayerRepository:
        return LocalLayerRepository(self.repo_path, layer_name=self.func_name, check_arch=self.check_arch)

    def load(self, backend: str | None = None) -> type[nn.Module]:
        return func_layer(self._source().kernel(backend), self.func_name, str(self.repo_path))


@dataclass(unsafe_hash=True)
class LockedFuncRepository:
    """Deprecated (as in `kernels`): function `func_name` of `repo_id` pinned by a lock file (read at
    construction, see `LockedLayerRepository`)."""

    repo_id: str
    _: KW_ONLY
    func_name: str
    lockfile: Path | None = None
    trust_remote_code: bool | tuple[str, ...] = False
    check_arch: bool = True
    source: LockedLayerRepository = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _deprecated(type(self).__name__, "LockedLayerRepository")
        _check_str("func_name", self.func_name, "'silu_and_mul'")
        source = LockedLayerRepository(self.repo_id, layer_name=self.func_name, lockfile=self.lockfile,
                                       trust_remote_code=self.trust_remote_code, check_arch=self.check_arch)
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "lockfile", source.lockfile)
        object.__setattr__(self, "trust_remote_code", source.trust_remote_code)

    def load(self, backend: str | None = None) -> type[nn.Module]:
        return func_layer(self.source.kernel(backend), self.func_name, self.repo_id)


AnyRepository = LayerRepository | LocalLayerRepository | LockedLayerRepository | Repository
OUR_REPOSITORIES = (LayerRepository, LocalLayerRepository, LockedLayerRepository, FuncRepository, LocalFuncRepository, LockedFuncRepository)


def layer_from_kernel(kernel: ModuleType, layer_name: str, where: str) -> type[nn.Module]:
    """Class `layer_name` from the kernel's `layers`, or an error listing the layers it has."""
    layers = getattr(kernel, "layers", None)
    if layers is None:
        raise LayerNotFoundError(f"Kernel {where} exports no `layers`; it cannot provide layer {layer_name!r}.")
    layer = getattr(layers, layer_name, None)
    if layer is None:
        available = sorted(n for n, v in vars(layers).items() if isinstance(v, type) and issubclass(v, nn.Module))
        raise LayerNotFoundError(
            f"Kernel {where} has no layer {layer_name!r}; its layers are: {', '.join(available) or 'none'}."
        )
    return layer


_FUNC_LAYERS: dict[Callable[..., Any], type[nn.Module]] = {}


def func_layer(kernel: ModuleType, func_name: str, where: str) -> type[nn.Module]:
    """A kernel layer class whose forward calls the kernel's top-level function `func_name` (the
    function's signature with `self` in front; `has_backward` / `can_torch_compile` read off the
    function, as `kernels` does). One class per function."""
    fn = getattr(kernel, func_name, None)
    if not callable(fn):
        available = sorted(n for n, v in vars(kernel).items() if callable(v) and not n.startswith("_") and not isinstance(v, type))
        raise LayerNotFoundError(f"Kernel {where} has no function {func_name!r}; its functions are: {', '.join(available) or 'none'}.")
    if fn not in _FUNC_LAYERS:

        def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        sig = inspect.signature(fn)
        self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        forward.__signature__ = sig.replace(parameters=[self_param, *sig.parameters.values()])  # type: ignore[attr-defined]
        attrs = {"forward": forward, "has_backward": getattr(fn, "has_backward", True),
                 "can_torch_compile": getattr(fn, "can_torch_compile", False), "__module__": getattr(fn, "__module__", __name__)}
        _FUNC_LAYERS[fn] = type(func_name, (nn.Module,), attrs)
    return _FUNC_LAYERS[fn]


def load_layer(repo: AnyRepository, backend: str) -> type[nn.Module]:
    """Load `repo`'s layer class; our repositories pick the build variant for `backend`, unless
    `load` was replaced on the instance, which is then called as `kernels` calls it: `repo.load()`.

    >>> repo = LayerRepository("org/act", layer_name="SiluAndMul", version=1)
    >>> repo.load = lambda: nn.Identity
    >>> load_layer(repo, "cpu") is nn.Identity, repo == LayerRepository("org/act", layer_name="SiluAndMul", version=1)
    (True, True)
    """
    if isinstance(repo, OUR_REPOSITORIES) and "load" not in vars(repo):
        return repo.load(backend=backend)
    return repo.load()


def check_repository(repo: object, where: str) -> None:
    """Raise unless `repo` is a hashable object with a `.load()` (an instance, not a repository class)."""
    if isinstance(repo, type):
        raise MappingError(
            f"Mapping value {repo.__name__} for {where} is a repository class, not a repository; use an instance "
            f"such as {repo.__name__}(..., layer_name='...')."
        )
    if not callable(getattr(repo, "load", None)):
        raise MappingError(
            f"Mapping value {repo!r} for {where} is not a repository; use LayerRepository, "
            "LocalLayerRepository, LockedLayerRepository or an object with .load()."
        )
    try:
        hash(repo)
    except TypeError as exc:
        raise MappingError(f"Repository {repo!r} for {where} must be hashable: {exc}.") from exc


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise MappingError(f"{name}={value!r} must be True or False.")


def _deprecated(name: str, instead: str) -> None:
    warnings.warn(f"{name} is deprecated (as in `kernels`); use {instead} with a layer instead.", DeprecationWarning, stacklevel=4)


def _check_str(field: str, value: object, example: str) -> None:
    if not isinstance(value, str) or not value:
        raise MappingError(f"{field}={value!r} must be a non-empty string such as {example}.")
