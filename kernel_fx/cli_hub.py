"""The `kernel-fx` subcommands about Hub kernels: `variants`, `lock`, `download`.

`add_hub_commands(subparsers)` adds them to the main parser; each sets `func`, which takes the
parsed arguments and returns the exit status (0 ok, 1 a kernel_fx error, printed to stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import KernelFxError


def add_hub_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `variants`, `lock` and `download` to the `kernel-fx` subcommands."""
    variants = subparsers.add_parser("variants", help="list a Hub kernel's build variants and which fits this system")
    variants.add_argument("repo_id", help="Hub kernel repo, e.g. kernels-community/activation")
    pinned = variants.add_mutually_exclusive_group()
    pinned.add_argument("--revision", help="branch, tag or commit sha (default: main)")
    pinned.add_argument("--version", type=int, help="version N, i.e. branch vN")
    variants.add_argument("--backend", help="judge for this backend (cpu, cuda, ...) instead of torch's")
    variants.set_defaults(func=_guarded(run_variants))

    lock = subparsers.add_parser("lock", help="pin a project's kernels: commit, variant and sha256 of every file")
    lock.add_argument("kernels", nargs="*", metavar="REPO[@REV]",
                      help="kernels to lock (REPO@vN for version N); default: [tool.kernel_fx.kernels] of the project")
    lock.add_argument("--project", type=Path, default=Path("."), help="project directory holding pyproject.toml (default: .)")
    lock.add_argument("-o", "--output", type=Path, help="lock file to write (default: PROJECT/kernel-fx.lock)")
    lock.add_argument("--backend", help="lock the variant that fits this backend instead of torch's")
    lock.add_argument("--variant", action="append", default=[], help="lock this variant (repeatable), e.g. for another machine")
    lock.set_defaults(func=_guarded(run_lock))

    download = subparsers.add_parser("download", help="fetch and verify every kernel of a lock file into the cache")
    download.add_argument("lockfile", type=Path, nargs="?", help="lock file (default: the nearest kernel-fx.lock)")
    download.set_defaults(func=_guarded(run_download))


def run_variants(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from .hub.api import get_kernel_variants

    found = get_kernel_variants(args.repo_id, revision=args.revision, version=args.version, backend=args.backend)
    pinned = f" (commit {found.commit})" if found.commit and found.commit != found.revision else ""
    print(f"{found.repo_id}@{found.revision}{pinned}")
    print(f"system: {found.system}")
    if found.from_cache:
        print("offline: only the variants in the local cache are listed")
    rows = [[c.name, _status(c, found.chosen), c.reason or "-"] for c in found.checks]
    print(tabulate(rows, headers=["variant", "status", "reason"]) if rows else "no build/ variants")
    return 0 if found.chosen else 1


def _status(check, chosen) -> str:
    if check is chosen:
        return "chosen"
    return "fits" if check.accepted else "rejected"


def run_lock(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .hub.locks import LOCKFILE_NAME, lock_kernels, write_lockfile
    from .hub.specs import parse_spec, project_specs
    from .hub.variants import system_info

    specs = [parse_spec(k) for k in args.kernels] if args.kernels else project_specs(args.project)
    if args.variant:
        specs = [replace(s, variants=tuple(args.variant)) for s in specs]
    _show_progress()
    entries = lock_kernels(specs, system_info(args.backend))
    output = args.output or args.project / LOCKFILE_NAME
    write_lockfile(output, entries)
    for entry in entries:
        print(f"locked {entry} ({len(entry.files)} files)")
    print(f"wrote {output}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from .hub import env
    from .hub.locks import download_locked, find_lockfile, read_lockfile

    path = args.lockfile or find_lockfile()
    _show_progress()
    entries = read_lockfile(path)
    for entry, variant_dir in zip(entries, download_locked(entries, path)):
        print(f"verified {entry}: {variant_dir}")
    print(f"{len(entries)} locked variants are in the cache {env.hub_cache_dir()}")
    return 0


def _show_progress() -> None:
    """Download progress bars on, whatever a library caller switched off (HF_HUB_DISABLE_PROGRESS_BARS wins)."""
    from huggingface_hub.utils import enable_progress_bars

    enable_progress_bars()


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Print kernel_fx errors as one line on stderr with exit status 1, instead of a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except KernelFxError as exc:
            print(f"kernel-fx: error: {exc}", file=sys.stderr)
            return 1

    run.__name__ = handler.__name__
    return run
