"""Zipped builds: a variant whose metadata says `"build-layout": "zip"` holds its package as `<id>.zip`.

This is the layout of Hugging Face `kernels` 0.19 (`build/<variant>/{metadata.json, <id>.zip}`, the
package's `__init__.py` at the root of the archive). `kernels` imports straight from the archive;
kernel_fx unpacks it first, so that compiled extensions inside it can load too, into

    <cache>/.kernel_fx/unzipped/<sha256 of the archive>/

A copy already there is used only after every file matched the archive (an unpacked copy is
outside the digest check, which covers the archive), else it is unpacked again. Unpacking refuses
absolute paths, `..`, links, devices, encrypted or duplicate entries, and archives past
`MAX_UNPACKED_BYTES`: an archive must not write outside its folder.

>>> import io, tempfile, zipfile
>>> variant = Path(tempfile.mkdtemp())
>>> with zipfile.ZipFile(variant / "k_1.zip", "w") as z:
...     z.writestr("__init__.py", "X = 1\\n")
>>> package = unpacked(variant, {"id": "k_1", "build-layout": "zip"}, root=Path(tempfile.mkdtemp()))
>>> (package / "__init__.py").read_text()
'X = 1\\n'
>>> with zipfile.ZipFile(variant / "k_1.zip", "w") as z:
...     z.writestr("../evil.py", "")
>>> unpacked(variant, {"id": "k_1", "build-layout": "zip"}, root=Path(tempfile.mkdtemp()))
Traceback (most recent call last):
...
kernel_fx.errors.KernelLoadError: Archive .../k_1.zip has an unsafe entry '../evil.py' (a path outside the archive's folder); refusing to unpack it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from ..errors import KernelLoadError
from .integrity import sha256_file, variant_files

LAYOUT_KEY = "build-layout"
LAYOUTS = ("files", "zip")
MAX_UNPACKED_BYTES = 16 << 30  # compiled kernels reach hundreds of MB; 16 GiB is a zip bomb
MAX_ENTRIES = 100_000
_CHUNK = 1 << 20
_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def layout(metadata: Mapping, where: object) -> str:
    """The variant's build layout: "files" (also when unset) or "zip"."""
    value = metadata.get(LAYOUT_KEY, "files")
    if value not in LAYOUTS:
        raise KernelLoadError(f"metadata.json of {where} has {LAYOUT_KEY}={value!r}; supported: {', '.join(LAYOUTS)}.")
    return value


def archive_of(variant_dir: Path, metadata: Mapping) -> Path:
    """`<variant>/<id>.zip`, which must exist."""
    kernel_id = metadata.get("id")
    if not isinstance(kernel_id, str) or not _ID.match(kernel_id):
        raise KernelLoadError(
            f"metadata.json of the zipped build in {variant_dir} has id={kernel_id!r}; a zipped build needs an id of "
            "letters, digits, '_', '-' and '.', which names its archive <id>.zip."
        )
    archive = Path(variant_dir) / f"{kernel_id}.zip"
    if not archive.is_file():
        raise KernelLoadError(f"The zipped build in {variant_dir} has no archive {archive.name} (its metadata `id` + .zip).")
    return archive


def unpacked(variant_dir: Path, metadata: Mapping, *, root: Path) -> Path:
    """The package directory of a zipped variant, unpacked under `root` and checked against the archive."""
    archive = archive_of(variant_dir, metadata)
    target = Path(root) / sha256_file(archive)
    with _open(archive) as zf:
        members = _safe_members(zf, archive)
        if not any(m.filename == "__init__.py" for m in members):
            raise KernelLoadError(f"Archive {archive} has no __init__.py at its root; it is not a kernel package.")
        if target.is_dir() and _matches(target, zf, members):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        fresh = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpacking-"))
        try:
            for member in members:
                _extract(zf, member, fresh)
            _publish(fresh, target, zf, members)
        finally:
            shutil.rmtree(fresh, ignore_errors=True)
    return target


def _open(archive: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as exc:
        raise KernelLoadError(f"Cannot read archive {archive}: {exc}.") from exc


def _safe_members(zf: zipfile.ZipFile, archive: Path) -> list[zipfile.ZipInfo]:
    """The file entries of `zf`, after refusing every entry that could write outside the target."""
    infos = zf.infolist()
    if len(infos) > MAX_ENTRIES:
        raise KernelLoadError(f"Archive {archive} has {len(infos)} entries, more than {MAX_ENTRIES}; refusing to unpack it.")
    seen: set[str] = set()
    files, total = [], 0
    for info in infos:
        problem = _entry_problem(info)
        if problem:
            raise KernelLoadError(f"Archive {archive} has an unsafe entry {info.filename!r} ({problem}); refusing to unpack it.")
        name = info.filename.rstrip("/")
        if name in seen:
            raise KernelLoadError(f"Archive {archive} has entry {name!r} twice; refusing to unpack it.")
        seen.add(name)
        if not info.is_dir() and not _is_bytecode(name):  # bytecode is never taken from a download
            files.append(info)
            total += info.file_size
    if total > MAX_UNPACKED_BYTES:
        raise KernelLoadError(f"Archive {archive} unpacks to {total} bytes, more than {MAX_UNPACKED_BYTES}; refusing to unpack it.")
    return files


def _is_bytecode(name: str) -> bool:
    return name.endswith(".pyc") or "__pycache__" in name.split("/")


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    path = PurePosixPath(name)
    if "\\" in name or "\0" in name or name.startswith("/") or ":" in path.parts[0]:
        return "an absolute or non-POSIX path"
    if any(part in ("", ".", "..") for part in name.rstrip("/").split("/")):
        return "a path outside the archive's folder"
    if info.flag_bits & 0x1:
        return "encrypted"
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "a link or special file"
    return None


def _extract(zf: zipfile.ZipFile, member: zipfile.ZipInfo, into: Path) -> None:
    destination = into.joinpath(*member.filename.split("/"))
    destination.parent.mkdir(parents=True, exist_ok=True)
    executable = (member.external_attr >> 16) & 0o111
    with zf.open(member) as src, open(destination, "xb") as dst:  # zipfile checks size and CRC as it reads
        shutil.copyfileobj(src, dst, _CHUNK)
    os.chmod(destination, 0o755 if executable else 0o644)


def _publish(fresh: Path, target: Path, zf: zipfile.ZipFile, members: list[zipfile.ZipInfo]) -> None:
    """Move `fresh` to `target`; another process may have done so first, or left a damaged copy."""
    try:
        os.rename(fresh, target)
        return
    except OSError:
        if target.is_dir() and _matches(target, zf, members):
            return  # another process unpacked the same archive
    stale = target.with_name(f".stale-{target.name}-{os.getpid()}")
    os.rename(target, stale)
    os.rename(fresh, target)
    shutil.rmtree(stale, ignore_errors=True)


def _matches(target: Path, zf: zipfile.ZipFile, members: list[zipfile.ZipInfo]) -> bool:
    """Whether `target` holds exactly the archive's files (Python's bytecode caches aside)."""
    on_disk = {rel: path for rel, path in variant_files(target).items() if not _is_bytecode(rel)}
    if set(on_disk) != {m.filename for m in members}:
        return False
    for member in members:
        digest = hashlib.sha256()
        with zf.open(member) as src:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != sha256_file(on_disk[member.filename]):
            return False
    return True
