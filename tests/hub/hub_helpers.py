"""Helpers of the Hub tests: the test kernel's files, child interpreters, the CLI in-process."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from kernel_repos import scale_layers

REPO_ROOT = Path(__file__).resolve().parents[2]

# A kernel whose package uses a relative import and says which build it is.
KERNEL_INIT = "from . import layers\nfrom ._tag import TAG\n"
KERNEL_LAYERS = scale_layers()  # class Scale: x * self.weight * self.factor


def kernel_files(tag: str) -> dict[str, str]:
    """The files of one variant of the test kernel; `TAG` tells builds apart."""
    return {"__init__.py": KERNEL_INIT, "layers.py": KERNEL_LAYERS, "_tag.py": f"TAG = {tag!r}\n"}


def child_env(**env: str) -> dict[str, str]:
    """The environment for a child interpreter: ours (PYTHONPATH kept, the repo first), plus `env`."""
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_DISABLE_PROGRESS_BARS": "1", **env}


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with `child_env(**env)`; raise on failure."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=child_env(**env), capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def cli(*argv: str) -> int:
    """Run a `kernel-fx` hub subcommand in-process; return its exit status."""
    from kernel_fx.cli_hub import add_hub_commands

    parser = argparse.ArgumentParser(prog="kernel-fx")
    add_hub_commands(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    return args.func(args)


# -- builds in the formats of the `kernels` package (0.19) ---------------------------------------


def zip_bytes(files: dict[str, str | bytes]) -> bytes:
    """A zip archive holding `files` ({path in the archive: content})."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def kernels_digest(files: dict[str, str | bytes], algorithm: str = "sha256") -> dict:
    """The `digest` a `kernels` 0.19 metadata.json carries for a variant of `files`: base64 per file."""
    import base64
    import hashlib

    def raw(content: str | bytes) -> bytes:
        return content.encode() if isinstance(content, str) else content

    return {"algorithm": algorithm, "files": {
        name: base64.b64encode(hashlib.new(algorithm, raw(content)).digest()).decode() for name, content in files.items()
    }}


def kernels_variant(kernel_id: str, files: dict[str, str | bytes], *, layout: str = "files", backend: str = "cpu",
                    digest: bool = True) -> dict[str, str | bytes]:
    """A variant as `kernels` 0.19 publishes it: `files` (zipped into `<id>.zip` for the zip layout)
    and a metadata.json with every field `kernels` requires, the layout and the digest."""
    if layout == "zip":
        files = {f"{kernel_id}.zip": zip_bytes(files)}
    metadata = {"id": kernel_id, "name": "scale", "version": 1, "license": "apache-2.0", "python-depends": [],
                "backend": {"type": backend}, "build-layout": layout}
    if digest:
        metadata["digest"] = kernels_digest(files)
    return {**files, "metadata.json": json.dumps(metadata)}


def write_repo(root: Path, variants: dict[str, dict[str, str | bytes]]) -> Path:
    """Write `root/build/<variant>/<file>` exactly as given (text or bytes); return `root`."""
    for variant, files in variants.items():
        for name, content in files.items():
            path = root / "build" / variant / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
    return root
