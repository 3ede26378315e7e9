"""sha256 of a variant's files, checked against a lock file or the metadata `digest` before import.

A variant's files are every regular file under `build/<variant>/`, by path relative to it, except
the `__pycache__` Python writes on import. The metadata `digest`, when present, has one of two forms:

- Hugging Face `kernels` 0.19: `{"algorithm": "sha256" | "sha512", "files": {"<relative path>": "<base64>"}}`,
  covering every file but the top-level `metadata.json` and `metadata.json.sigstore` and Python
  bytecode (`*.pyc`, `__pycache__/`);
- kernel_fx's own: `{"sha256": {"<relative path>": "<hex>", ...}}`, covering every file but `metadata.json`.

A Hub kernel without a digest loads with a warning, as in `kernels`: nothing vouches for its files.

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

import base64
import binascii
import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path

from .errors import KernelIntegrityError

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
KERNELS_DIGEST_ALGORITHMS = ("sha256", "sha512")
# Outside a `kernels` digest: the metadata that carries it and its signature (top level only).
KERNELS_DIGEST_EXCLUDED = ("metadata.json", "metadata.json.sigstore")


def sha256_file(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest (sha256 unless `algorithm` says otherwise) of one file, read in chunks
    (compiled kernels can be hundreds of MB)."""
    digest = hashlib.new(algorithm)
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


def verify_files(
    variant_dir: Path,
    expected: Mapping[str, str],
    *,
    what: str,
    ignore: tuple[str, ...] = (),
    algorithm: str = "sha256",
    ignore_bytecode: bool = False,
) -> None:
    """Raise `KernelIntegrityError` unless the variant's files are exactly `expected` (hex digests).

    Modified, missing and unexpected files are all refused: an extra file is code that nobody
    pinned. `ignore` names files outside the check (the metadata that carries the digest);
    `ignore_bytecode` leaves `*.pyc` files out too.
    """
    actual = {
        rel: path for rel, path in variant_files(variant_dir).items()
        if rel not in ignore and not (ignore_bytecode and rel.endswith(".pyc"))
    }
    problems = [f"missing {rel}" for rel in sorted(set(expected) - set(actual))]
    problems += [f"unexpected {rel}" for rel in sorted(set(actual) - set(expected))]
    problems += [
        f"modified {rel}" for rel in sorted(set(actual) & set(expected)) if sha256_file(actual[rel], algorithm) != expected[rel]
    ]
    if problems:
        raise KernelIntegrityError(
            f"Files of {variant_dir} differ from {what}: {', '.join(problems)}. Refusing to import them; "
            "the cache may be corrupt or tampered with: delete that snapshot and download it again."
        )


def check_digest(variant_dir: Path, metadata: Mapping, *, where: str, warn_missing: bool = True) -> None:
    """Verify the variant against its metadata `digest`, in either form; without one, warn (unless told not to)."""
    digest = metadata.get("digest")
    what = f"the digest in its metadata.json ({where})"
    if digest is None:
        if warn_missing:
            logger.warning("kernel_fx: %s has no digest in its metadata.json, so its files cannot be verified.", where)
        return
    if isinstance(digest, Mapping) and "algorithm" in digest:
        expected, algorithm = _kernels_digest(digest, where)
        verify_files(variant_dir, expected, what=what, ignore=KERNELS_DIGEST_EXCLUDED, algorithm=algorithm, ignore_bytecode=True)
        return
    if not isinstance(digest, Mapping) or not isinstance(digest.get("sha256"), Mapping):
        raise KernelIntegrityError(
            f"metadata.json of {where} has digest={digest!r}; supported: {{\"algorithm\": \"sha256\" or \"sha512\", "
            f"\"files\": {{\"<file>\": \"<base64>\", ...}}}} or {{\"sha256\": {{\"<file>\": \"<hex>\", ...}}}}."
        )
    verify_files(variant_dir, digest["sha256"], what=what, ignore=("metadata.json",))


def _kernels_digest(digest: Mapping, where: str) -> tuple[dict[str, str], str]:
    """The `kernels` digest's files as {path: hex digest}, and its algorithm."""
    algorithm, files = digest.get("algorithm"), digest.get("files")
    if algorithm not in KERNELS_DIGEST_ALGORITHMS or not isinstance(files, Mapping):
        raise KernelIntegrityError(
            f"metadata.json of {where} has digest algorithm={algorithm!r} and files of type {type(files).__name__}; "
            f"supported: algorithm one of {', '.join(KERNELS_DIGEST_ALGORITHMS)} and files a {{path: base64 digest}} object."
        )
    return {rel: _hex(value) for rel, value in files.items()}, algorithm


def _hex(value: object) -> str:
    """A base64 digest as hex; a value that is not base64 stays as it is, and so matches no file."""
    try:
        return base64.b64decode(str(value), validate=True).hex()
    except (binascii.Error, ValueError):
        return f"not base64: {value!r}"
