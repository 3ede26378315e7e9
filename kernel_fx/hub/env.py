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
| `KERNEL_FX_HUB_TIMEOUT` | seconds to wait for an answer of the Hub (default 10, or huggingface_hub's `HF_HUB_*_TIMEOUT` if larger) |

`KERNEL_FX_LOCAL_KERNELS` wins for a repo named in both override variables. Zipped builds are
unpacked under `<cache>/.kernel_fx/unzipped/` (see `archives`).

>>> {k: v.as_posix() for k, v in parse_local_kernels("org/a=/opt/a:org/b=C:/kernels/b,org/c=rel/c").items()}
{'org/a': '/opt/a', 'org/b': 'C:/kernels/b', 'org/c': 'rel/c'}
>>> {k: v.as_posix() for k, v in parse_kernels_local_kernels("org/a=/opt/a:org/b=rel/b").items()}
{'org/a': '/opt/a', 'org/b': 'rel/b'}
>>> parse_hub_timeout("0.5")
HubTimeout(seconds=0.5, origin='KERNEL_FX_HUB_TIMEOUT=0.5')
>>> parse_hub_timeout("soon")
Traceback (most recent call last):
...
kernel_fx.hub.errors.EnvironmentVariableError: KERNEL_FX_HUB_TIMEOUT='soon' must be a number of seconds greater than 0, such as 10 or 0.5.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
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


# huggingface_hub's own default request timeout (DEFAULT_REQUEST_TIMEOUT in 1.x and 2.x).
DEFAULT_HUB_TIMEOUT = 10.0


@dataclass(frozen=True)
class HubTimeout:
    """How long to wait for the Hub to answer, and where that number came from (for messages)."""

    seconds: float
    origin: str

    def __post_init__(self) -> None:
        if not (isinstance(self.seconds, (int, float)) and math.isfinite(self.seconds) and self.seconds > 0):
            raise ValueError(f"HubTimeout(seconds={self.seconds!r}) must be a finite number of seconds greater than 0.")

    def __str__(self) -> str:
        return f"{self.seconds:g} s"


def hub_timeout() -> HubTimeout:
    """`KERNEL_FX_HUB_TIMEOUT`, else 10 s or huggingface_hub's `HF_HUB_ETAG_TIMEOUT` /
    `HF_HUB_DOWNLOAD_TIMEOUT` (read by it at import) where one of them was set higher."""
    value = os.environ.get("KERNEL_FX_HUB_TIMEOUT", "").strip()
    if value:
        return parse_hub_timeout(value)
    from huggingface_hub import constants

    theirs = {name: getattr(constants, name, None) for name in ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT")}
    name, seconds = max(((n, s) for n, s in theirs.items() if isinstance(s, (int, float)) and s > 0), key=lambda i: i[1],
                        default=(None, 0))
    if name is None or seconds <= DEFAULT_HUB_TIMEOUT:
        return HubTimeout(DEFAULT_HUB_TIMEOUT, "the default; KERNEL_FX_HUB_TIMEOUT is unset")
    return HubTimeout(float(seconds), f"huggingface_hub's {name}={seconds:g}; KERNEL_FX_HUB_TIMEOUT is unset")


def parse_hub_timeout(value: str) -> HubTimeout:
    """A `KERNEL_FX_HUB_TIMEOUT` value: seconds, a finite number greater than 0 (waiting forever is not offered)."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise EnvironmentVariableError(
            f"KERNEL_FX_HUB_TIMEOUT={value!r} must be a number of seconds greater than 0, such as 10 or 0.5."
        )
    return HubTimeout(seconds, f"KERNEL_FX_HUB_TIMEOUT={value}")


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
