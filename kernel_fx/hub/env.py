"""The environment variables that steer Hub loading, read at call time (never cached at import).

| variable | meaning |
|---|---|
| `KERNEL_FX_CACHE` | cache directory, passed to huggingface_hub as `cache_dir` (default: its `HF_HUB_CACHE`) |
| `KERNELS_CACHE` | the Hugging Face `kernels` package's name for the same, used when `KERNEL_FX_CACHE` is unset |
| `KERNEL_FX_LOCAL_KERNELS` | `org/name=/path` overrides, separated by `:` or `,` |
| `LOCAL_KERNELS` | `kernels`' overrides, `org/name=/path` separated by `:` only; not for locked loads (as in `kernels`) |
| `KERNEL_FX_TRUSTED` | comma-separated owners or repo ids whose kernels may run without opt-in |
| `HF_HUB_OFFLINE` | `1`: resolve everything from the cache, never open a connection |
| `HF_ENDPOINT` | the Hub to talk to; read here too because huggingface_hub reads it only at import |

`KERNEL_FX_LOCAL_KERNELS` wins for a repo named in both override variables. Zipped builds are
unpacked under `<cache>/.kernel_fx/unzipped/` (see `archives`).

>>> {k: v.as_posix() for k, v in parse_local_kernels("org/a=/opt/a:org/b=C:/kernels/b,org/c=rel/c").items()}
{'org/a': '/opt/a', 'org/b': 'C:/kernels/b', 'org/c': 'rel/c'}
>>> {k: v.as_posix() for k, v in parse_kernels_local_kernels("org/a=/opt/a:org/b=rel/b").items()}
{'org/a': '/opt/a', 'org/b': 'rel/b'}
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import EnvironmentVariableError

_TRUE = {"1", "ON", "YES", "TRUE"}  # the values huggingface_hub accepts as true
REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# An entry starts at a separator followed by `org/name=`; a `:` inside a path (C:/...) does not.
_ENTRY_SPLIT = re.compile(r"[,:](?=[\w.-]+/[\w.-]+=)")


def cache_dir() -> str | None:
    """`KERNEL_FX_CACHE`, else `KERNELS_CACHE`, else None to let huggingface_hub use its default cache."""
    return os.environ.get("KERNEL_FX_CACHE") or os.environ.get("KERNELS_CACHE") or None


def hub_cache_dir() -> Path:
    """The cache directory huggingface_hub will use for our downloads."""
    explicit = cache_dir()
    if explicit:
        return Path(explicit).expanduser().resolve()
    from huggingface_hub import constants  # cheap: constants only, no HTTP client

    return Path(constants.HF_HUB_CACHE).expanduser().resolve()


def offline() -> bool:
    """True when `HF_HUB_OFFLINE` is set now, or was set when huggingface_hub was imported."""
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE:
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def endpoint() -> str | None:
    """`HF_ENDPOINT` as set now (None: huggingface_hub's default)."""
    value = os.environ.get("HF_ENDPOINT")
    return value.rstrip("/") if value else None


def endpoint_label() -> str:
    """The endpoint for messages."""
    explicit = endpoint()
    if explicit:
        return explicit
    from huggingface_hub import constants

    return constants.ENDPOINT


def unpack_root() -> Path:
    """Where zipped builds are unpacked: a kernel_fx folder inside the cache."""
    return hub_cache_dir() / ".kernel_fx" / "unzipped"


def local_kernels(*, locked: bool = False) -> dict[str, Path]:
    """The local overrides as {repo_id: path}: `LOCAL_KERNELS` (unless `locked`) under `KERNEL_FX_LOCAL_KERNELS`.

    `kernels` 0.19 does not apply `LOCAL_KERNELS` to kernels loaded from a lock file; kernel_fx's
    own variable applies everywhere.
    """
    ours = parse_local_kernels(os.environ.get("KERNEL_FX_LOCAL_KERNELS", ""))
    if locked:
        return ours
    return {**parse_kernels_local_kernels(os.environ.get("LOCAL_KERNELS", "")), **ours}


def parse_local_kernels(value: str) -> dict[str, Path]:
    """Parse `org/a=/path/a:org/b=/path/b` (or with `,`) into {repo_id: path}."""
    overrides: dict[str, Path] = {}
    for entry in filter(None, (e.strip() for e in _ENTRY_SPLIT.split(value))):
        repo_id, sep, path = entry.partition("=")
        if not sep or not REPO_ID.match(repo_id) or not path:
            raise EnvironmentVariableError(
                f"KERNEL_FX_LOCAL_KERNELS entry {entry!r} must be 'org/name=/path/to/repo'; "
                "separate entries with ':' or ','."
            )
        overrides[repo_id] = Path(path).expanduser()
    return overrides


def trusted() -> frozenset[str]:
    """`KERNEL_FX_TRUSTED`: owners (`org`) or repo ids (`org/name`)."""
    value = os.environ.get("KERNEL_FX_TRUSTED", "")
    return frozenset(e.strip() for e in value.split(",") if e.strip())


def parse_kernels_local_kernels(value: str) -> dict[str, Path]:
    """`LOCAL_KERNELS` as `kernels` 0.19 reads it: `org/a=/path/a:org/b=/path/b`, split at every `:`."""
    overrides: dict[str, Path] = {}
    for entry in value.split(":") if value.strip() else ():
        repo_id, sep, path = entry.strip().partition("=")
        if not sep or not repo_id or not path:
            raise EnvironmentVariableError(
                f"LOCAL_KERNELS entry {entry!r} must be 'org/name=/path/to/repo'; separate entries with ':' "
                "(a path with ':' needs KERNEL_FX_LOCAL_KERNELS)."
            )
        overrides[repo_id] = Path(path).expanduser()
    return overrides
