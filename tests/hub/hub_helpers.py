"""Helpers of the Hub tests: the test kernel's files, child interpreters, the CLI in-process."""

from __future__ import annotations

import argparse
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
