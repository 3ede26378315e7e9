"""The kernels a project declares: `[tool.kernel_fx.kernels]` in pyproject.toml, or `org/name@rev` specs.

    [tool.kernel_fx.kernels]
    "kernels-community/activation" = { version = 1 }
    "org/rmsnorm" = { revision = "main", variants = ["torch-cpu", "torch213-cxx11-cu130-x86_64-linux"] }

`variants` locks named variants (e.g. for a GPU server, from a CPU laptop); without it the
variant that fits the locking machine is locked.

>>> parse_spec("org/act@v2")
KernelSpec(repo_id='org/act', revision=None, version=2, variants=(), dependency=False)
>>> parse_spec("org/act@my-tag").revision
'my-tag'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .cache import branch_version
from .env import REPO_ID
from .errors import LockfileError


@dataclass(frozen=True)
class KernelSpec:
    """A kernel to lock: repo, revision or version, and optionally which variants."""

    repo_id: str
    revision: str | None = None
    version: int | None = None
    variants: tuple[str, ...] = ()
    dependency: bool = False  # locked because a locked kernel depends on it: `variants` it lacks are skipped

    def __post_init__(self) -> None:
        if not REPO_ID.match(self.repo_id):
            raise LockfileError(f"Kernel {self.repo_id!r} must be a repo id such as 'org/name'.")
        if self.revision is not None and self.version is not None:
            raise LockfileError(f"Kernel {self.repo_id!r} has revision={self.revision!r} and version={self.version!r}; give one.")


def parse_spec(text: str) -> KernelSpec:
    """`org/name`, `org/name@<branch, tag or commit>`, or `org/name@v<N>` for version N."""
    repo_id, _, revision = text.partition("@")
    version = branch_version(revision)
    if version is not None:
        return KernelSpec(repo_id, version=version)
    return KernelSpec(repo_id, revision=revision or None)


def project_specs(project: Path) -> list[KernelSpec]:
    """The kernels declared in `project`/pyproject.toml (or that file itself)."""
    path = Path(project)
    if path.is_dir():
        path = path / "pyproject.toml"
    table = _read_toml(path).get("tool", {}).get("kernel_fx", {}).get("kernels")
    if not isinstance(table, dict) or not table:
        raise LockfileError(
            f"{path} declares no kernels; add a [tool.kernel_fx.kernels] table such as "
            "'\"kernels-community/activation\" = { version = 1 }', or name the kernels on the command line."
        )
    return [_spec_from_toml(repo_id, value, path) for repo_id, value in table.items()]


def _spec_from_toml(repo_id: str, value: object, path: Path) -> KernelSpec:
    allowed = {"revision", "version", "variants"}
    if not isinstance(value, dict) or set(value) - allowed:
        raise LockfileError(f"{path}: kernel {repo_id!r} = {value!r} must be a table with keys among {sorted(allowed)}.")
    variants = value.get("variants", [])
    if not isinstance(variants, list) or not all(isinstance(v, str) for v in variants):
        raise LockfileError(f"{path}: kernel {repo_id!r} variants={variants!r} must be a list of variant names.")
    revision, version = value.get("revision"), value.get("version")
    if revision is not None and (not isinstance(revision, str) or not revision):
        raise LockfileError(f"{path}: kernel {repo_id!r} revision={revision!r} must be a branch, tag or commit name.")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 0):
        raise LockfileError(f"{path}: kernel {repo_id!r} version={version!r} must be a non-negative integer.")
    return KernelSpec(repo_id, revision=revision, version=version, variants=tuple(variants))


def _read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise LockfileError(f"{path} does not exist; pass the project directory or name the kernels to lock.") from None
    except (OSError, ValueError) as exc:
        raise LockfileError(f"Cannot read {path}: {exc}.") from exc
