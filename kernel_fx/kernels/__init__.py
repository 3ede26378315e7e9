"""The kernel repository bundled with kernel_fx, laid out like a Hub kernel repo.

`build/torch-cpu` holds plain-torch layers (for tests and CPU demos), `build/torch-cuda` Triton
layers with forward and backward. Neither is imported here: the loader imports a variant by path.

>>> (bundled_repo_path() / "build" / "torch-cpu" / "metadata.json").is_file()
True
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["bundled_repo_path"]


def bundled_repo_path() -> Path:
    """The directory of the bundled kernel repository (the one that contains `build/`)."""
    return Path(__file__).resolve().parent
