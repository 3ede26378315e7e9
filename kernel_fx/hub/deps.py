"""Kernels that depend on other kernels: `kernel-depends` in a variant's metadata, and `get_kernel_dep`.

A variant's `metadata.json` may name the kernels its code needs, as the Hugging Face `kernels`
package (0.19) writes them:

    "kernel-depends": [{"repo-id": "kernels-community/einops", "version": 1}]

(`version` or `revision`, never both). Before the variant's package is imported, each dependency
is loaded the way the kernel itself is (from the Hub at that version, or pinned by the same lock
file); while the package's code runs, `get_kernel_dep(repo_id)` returns the loaded dependency.

>>> kernel_dependencies({"kernel-depends": [{"repo-id": "org/einops", "version": 1}]}, where="org/k")
(KernelDependency(repo_id='org/einops', version=1, revision=None),)
>>> with providing({"org/einops": "<module>"}):
...     get_kernel_dep("org/einops")
'<module>'
>>> get_kernel_dep("org/einops")
Traceback (most recent call last):
...
kernel_fx.hub.errors.KernelDependencyError: get_kernel_dep('org/einops') works only while a kernel is being imported (at its package's top level).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import ModuleType

from .env import REPO_ID
from .errors import KernelDependencyError
from .revisions import requested

DEPENDS_KEY = "kernel-depends"

# The dependencies of the kernel whose package is being imported now (None: no import under way),
# and the repos whose dependencies are being loaded, outermost first (to refuse cycles).
_PROVIDED: ContextVar[Mapping[str, ModuleType] | None] = ContextVar("kernel_fx_kernel_deps", default=None)
_LOADING: ContextVar[tuple[str, ...]] = ContextVar("kernel_fx_kernel_deps_loading", default=())


@dataclass(frozen=True)
class KernelDependency:
    """One entry of `kernel-depends`: a Hub kernel repo at a version (branch `v<N>`) or a revision."""

    repo_id: str
    version: int | None = None
    revision: str | None = None

    @property
    def requested(self) -> str:
        """What the dependency asks for: `v<N>` or the revision."""
        return requested(self.revision, self.version)

    def __str__(self) -> str:
        return f"{self.repo_id} ({self.requested})"


def kernel_dependencies(metadata: Mapping[str, object], *, where: object) -> tuple[KernelDependency, ...]:
    """The `kernel-depends` of a variant's metadata, validated; `where` names the variant in errors."""
    items = metadata.get(DEPENDS_KEY) or []
    if not isinstance(items, list):
        raise KernelDependencyError(f"{where}: metadata {DEPENDS_KEY}={items!r} must be a list of {{\"repo-id\": ..., \"version\": N}}.")
    return tuple(_dependency(item, where) for item in items)


def _dependency(item: object, where: object) -> KernelDependency:
    allowed = {"repo-id", "version", "revision"}
    if not isinstance(item, dict) or not set(item) <= allowed or "repo-id" not in item:
        raise KernelDependencyError(
            f"{where}: {DEPENDS_KEY} entry {item!r} must be an object with repo-id and one of version, revision (keys allowed: "
            f"{', '.join(sorted(allowed))})."
        )
    repo_id, version, revision = item["repo-id"], item.get("version"), item.get("revision")
    if not isinstance(repo_id, str) or not REPO_ID.match(repo_id):
        raise KernelDependencyError(f"{where}: {DEPENDS_KEY} repo-id={repo_id!r} must be a Hub repo id such as 'kernels-community/einops'.")
    if (version is None) == (revision is None):
        raise KernelDependencyError(f"{where}: {DEPENDS_KEY} entry for {repo_id} must have exactly one of version and revision, got {item!r}.")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 0):
        raise KernelDependencyError(f"{where}: {DEPENDS_KEY} entry for {repo_id} has version={version!r}; it must be a non-negative int.")
    if revision is not None and (not isinstance(revision, str) or not revision):
        raise KernelDependencyError(f"{where}: {DEPENDS_KEY} entry for {repo_id} has revision={revision!r}; it must be a branch, tag or commit.")
    return KernelDependency(repo_id, version, revision)


def load_dependencies(metadata: Mapping[str, object], *, repo_id: str, where: object,
                      load: Callable[[KernelDependency], ModuleType]) -> dict[str, ModuleType]:
    """{repo id: module} for every dependency of the variant with `metadata`, each loaded by `load`
    (which may load dependencies of its own); a dependency cycle raises `KernelDependencyError`."""
    needed = kernel_dependencies(metadata, where=where)
    if not needed:
        return {}
    loading = _LOADING.get()
    token = _LOADING.set((*loading, repo_id))
    try:
        modules = {}
        for dependency in needed:
            if dependency.repo_id in (*loading, repo_id):
                chain = " -> ".join((*loading, repo_id, dependency.repo_id))
                raise KernelDependencyError(f"{where}: kernel dependencies form a cycle: {chain}; a kernel may not depend on itself.")
            modules[dependency.repo_id] = load(dependency)
        return modules
    finally:
        _LOADING.reset(token)


@contextlib.contextmanager
def providing(dependencies: Mapping[str, ModuleType]) -> Iterator[None]:
    """While the block runs (a kernel's package being imported), `get_kernel_dep` returns these, and
    so does the `kernels` package's own `get_kernel_dep` (see `_kernels_providing`)."""
    token = _PROVIDED.set(dict(dependencies))
    try:
        with _kernels_providing(dependencies):
            yield
    finally:
        _PROVIDED.reset(token)


def _kernels_providing(dependencies: Mapping[str, ModuleType]) -> contextlib.AbstractContextManager:
    """Kernels on the Hub write `from kernels import get_kernel_dep`, which reads a context variable of
    the `kernels` package (0.19: set by `kernels._internals.deps.use_kernel_deps`, reset on exit). Set
    it too for the import, so those kernels load here; where `kernels` is absent or has no such
    function, only kernel_fx's `get_kernel_dep` works. Nothing is imported for a kernel without
    dependencies."""
    if not dependencies:
        return contextlib.nullcontext()
    try:
        from kernels._internals.deps import use_kernel_deps  # type: ignore[import-not-found]
    except Exception:  # absent, or another layout: a private name of another package
        return contextlib.nullcontext()
    return use_kernel_deps(dict(dependencies))


def get_kernel_dep(repo_id: str) -> ModuleType:
    """The kernel `repo_id` that the kernel being imported declared in its metadata's `kernel-depends`,
    as the Hugging Face `kernels` package's `get_kernel_dep`. Kernels call it at the top level of
    their package (see the module docstring); elsewhere it raises `KernelDependencyError`."""
    provided = _PROVIDED.get()
    if provided is None:
        raise KernelDependencyError(
            f"get_kernel_dep({repo_id!r}) works only while a kernel is being imported (at its package's top level)."
        )
    if repo_id not in provided:
        declared = ", ".join(sorted(provided)) or "none"
        raise KernelDependencyError(
            f"get_kernel_dep({repo_id!r}): the kernel being imported does not declare {repo_id} in its metadata's {DEPENDS_KEY} "
            f"(it declares: {declared}); add it to `kernel-deps` in the kernel's build.toml."
        )
    return provided[repo_id]
