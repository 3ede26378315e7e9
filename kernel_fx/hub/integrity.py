"""sha256 of a variant's files, checked against a lock file or the metadata `digest` before import.

A variant's files are every regular file under `build/<variant>/`, by path relative to it, except
the `__pycache__` Python writes on import. The metadata `digest`, when present, has the form
`{"sha256": {"<relative path>": "<hex>", ...}}` and covers every file but `metadata.json` itself.

>>> import tempfile
>>> d = Path(tempfile.mkdtemp())
>>> _ = (d / "__init__.py").write_text("x = 1\\n")
>>> hashes = hash_files(d)
>>> hashes
{'__init__.py': '9e26bf369911c45c243c684147b23fc9e1dcfcf257d299a1c632016a6fcd33f4'}
>>> verify_files(d, hashes, what="the test lock")
>>> _ = (d / "__init__.py").write_text("x = 2\\n")
>>> verify_files(d, hashes, what="the test lock")
Traceback (most recent call last):
...
kernel_fx.hub.errors.KernelIntegrityError: Files of ... differ from the test lock: modified __init__.py. ...
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping

from .errors import KernelIntegrityError

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of one file, read in chunks (compiled kernels can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def variant_files(variant_dir: Path) -> dict[str, Path]:
    """{relative posix path: path} of every file of the variant, without Python's bytecode caches."""
    files = {}
    for path in sorted(Path(variant_dir).rglob("*")):
        rel = path.relative_to(variant_dir)
        if "__pycache__" in rel.parts or not path.is_file():
            continue
        files[rel.as_posix()] = path
    return files


def hash_files(variant_dir: Path) -> dict[str, str]:
    """{relative path: sha256} of every file of the variant."""
    return {rel: sha256_file(path) for rel, path in variant_files(variant_dir).items()}


def verify_files(variant_dir: Path, expected: Mapping[str, str], *, what: str, ignore: tuple[str, ...] = ()) -> None:
    """Raise `KernelIntegrityError` unless the variant's files are exactly `expected` (by sha256).

    Modified, missing and unexpected files are all refused: an extra file is code that nobody
    pinned. `ignore` names files outside the check (the metadata that carries the digest).
    """
    actual = {rel: path for rel, path in variant_files(variant_dir).items() if rel not in ignore}
    problems = [f"missing {rel}" for rel in sorted(set(expected) - set(actual))]
    problems += [f"unexpected {rel}" for rel in sorted(set(actual) - set(expected))]
    problems += [f"modified {rel}" for rel in sorted(set(actual) & set(expected)) if sha256_file(actual[rel]) != expected[rel]]
    if problems:
        raise KernelIntegrityError(
            f"Files of {variant_dir} differ from {what}: {', '.join(problems)}. Refusing to import them; "
            "the cache may be corrupt or tampered with: delete that snapshot and download it again."
        )


def check_digest(variant_dir: Path, metadata: Mapping, *, where: str) -> None:
    """Verify the variant against its metadata `digest`, if it has one."""
    digest = metadata.get("digest")
    if digest is None:
        return
    if not isinstance(digest, Mapping) or not isinstance(digest.get("sha256"), Mapping):
        raise KernelIntegrityError(
            f"metadata.json of {where} has digest={digest!r}; supported: {{\"sha256\": {{\"<file>\": \"<hex>\", ...}}}}."
        )
    verify_files(variant_dir, digest["sha256"], what=f"the digest in its metadata.json ({where})", ignore=("metadata.json",))
