"""What a kernel exports — its functions, and its layers with their flags — without importing its code
(`kernels` 0.19's `describe-api`).

The build's `symbols.json` (written by kernel-builder, schema 1) is read when present; otherwise the
package's `__init__.py` and `layers` module are parsed (not run) with `ast`: top-level functions, and
the classes of `layers` with literal `has_backward` / `can_torch_compile` (None when not literal).
A zipped build is read inside its archive.

>>> import tempfile
>>> repo = Path(tempfile.mkdtemp())
>>> (repo / "build" / "torch-universal").mkdir(parents=True)
>>> _ = (repo / "build" / "torch-universal" / "__init__.py").write_text("from . import layers\\ndef twice(x):\\n    return 2 * x\\n")
>>> _ = (repo / "build" / "torch-universal" / "layers.py").write_text("class Twice:\\n    has_backward = False\\n    def forward(self, x): ...\\n")
>>> api = describe_api(str(repo))
>>> api.variant, api.functions, api.layers
('torch-universal', ('twice',), (LayerFlags(name='Twice', has_backward=False, can_torch_compile=None),))
"""

from __future__ import annotations

import ast
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import KernelLoadError

FLAGS = ("has_backward", "can_torch_compile")


@dataclass(frozen=True)
class LayerFlags:
    """A layer class of a kernel and its flags (None: not declared as a literal, or unknown)."""

    name: str
    has_backward: bool | None
    can_torch_compile: bool | None


@dataclass(frozen=True)
class ApiDescription:
    """A kernel build's public symbols; `source` is the repo (with revision) or the local path."""

    source: str
    variant: str
    functions: tuple[str, ...]
    layers: tuple[LayerFlags, ...]
    from_symbols: bool

    def as_dict(self) -> dict:
        return {"source": self.source, "variant": self.variant, "from": "symbols.json" if self.from_symbols else "source",
                "functions": [{"name": n} for n in self.functions],
                "layers": [{"name": la.name, "attributes": {f: getattr(la, f) for f in FLAGS}} for la in self.layers]}


def describe_api(kernel: str, *, revision: str | None = None, version: int | None = None, backend: str | None = None) -> ApiDescription:
    """Describe a local kernel repo (a directory) or Hub repo `org/name` at `revision` / `version`
    (default `main`), for the variant that fits this system. Nothing of the kernel is imported."""
    path = Path(kernel).expanduser()
    if path.is_dir():
        if revision is not None or version is not None:
            raise KernelLoadError(f"{kernel} is a local directory: --revision and --version apply to Hub repos only.")
        variant_dir, source = _local_variant(path, backend), str(path)
    else:
        variant_dir, source = _hub_variant(kernel, revision, version, backend)
    return describe_variant(variant_dir, source)


def describe_variant(variant_dir: Path, source: str) -> ApiDescription:
    symbols = variant_dir / "symbols.json"
    if symbols.is_file():
        functions, layers = _from_symbols(symbols)
        return ApiDescription(source, variant_dir.name, functions, layers, True)
    files = _package_files(variant_dir)
    init = files.get("__init__.py", "")
    layers_source = files.get("layers.py", files.get("layers/__init__.py", ""))
    return ApiDescription(source, variant_dir.name, _functions(init, variant_dir), _layers(layers_source, variant_dir), False)


def _local_variant(path: Path, backend: str | None) -> Path:
    from .hub.local import local_variant_dir

    return local_variant_dir(path.resolve(), backend=backend)


def _hub_variant(repo_id: str, revision: str | None, version: int | None, backend: str | None) -> tuple[Path, str]:
    from .hub.resolve import fetch, resolve
    from .hub.variants import choose_variant, system_info

    system = system_info(backend)
    resolved = resolve(repo_id, revision=revision, version=version, system=system)
    choice = choose_variant(list(resolved.variants), system, where=f"kernel repo {resolved}")
    variant_dir, commit = fetch(resolved, choice.name)  # downloads the files only; no trust needed to read them
    return variant_dir, f"{repo_id}@{resolved.revision} ({commit[:12]})"


def _package_files(variant_dir: Path) -> dict[str, str]:
    """{relative path: text} of the Python files that matter, on disk or inside a zipped build."""
    from .hub.archives import archive_of, layout
    from .hub.importer import read_metadata

    metadata = read_metadata(variant_dir)
    if layout(metadata, variant_dir) == "zip":
        with zipfile.ZipFile(archive_of(variant_dir, metadata)) as archive:
            names = archive.namelist()
            root = next((n[: -len("__init__.py")] for n in sorted(names, key=len) if n.endswith("__init__.py")), "")
            return {n[len(root):]: archive.read(n).decode() for n in names if n.startswith(root) and n.endswith(".py")}
    package = variant_dir
    if not (package / "__init__.py").is_file():  # kernels 0.19: the package may sit in <variant>/<name>/
        package = next((p for p in variant_dir.iterdir() if (p / "__init__.py").is_file()), variant_dir)
    wanted = ("__init__.py", "layers.py", "layers/__init__.py")
    return {name: (package / name).read_text() for name in wanted if (package / name).is_file()}


def _from_symbols(path: Path) -> tuple[tuple[str, ...], tuple[LayerFlags, ...]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KernelLoadError(f"Cannot read {path}: {exc}.") from exc
    if not isinstance(data, dict) or data.get("schema_version") != 1:
        raise KernelLoadError(f"{path} has an unsupported schema; expected schema_version 1 (kernel-builder's).")
    try:
        functions = tuple(f["name"] for f in data["functions"])
        layers = tuple(LayerFlags(la["name"], *(la.get("attributes", {}).get(f) for f in FLAGS)) for la in data["layers"])
    except (KeyError, TypeError) as exc:
        raise KernelLoadError(f"{path} is malformed: functions and layers must be lists of named symbols ({exc}).") from exc
    return functions, layers


def _parse(source: str, where: Path) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError as exc:
        raise KernelLoadError(f"Cannot parse the kernel package in {where}: {exc}.") from exc


def _functions(source: str, where: Path) -> tuple[str, ...]:
    tree = _parse(source, where)
    return tuple(n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and not n.name.startswith("_"))


def _layers(source: str, where: Path) -> tuple[LayerFlags, ...]:
    tree = _parse(source, where)
    return tuple(LayerFlags(n.name, *(_literal_flag(n, f) for f in FLAGS)) for n in tree.body
                 if isinstance(n, ast.ClassDef) and not n.name.startswith("_"))


def _literal_flag(cls: ast.ClassDef, name: str) -> bool | None:
    for stmt in cls.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets):
            value = stmt.value
            return value.value if isinstance(value, ast.Constant) and isinstance(value.value, bool) else None
    return None
