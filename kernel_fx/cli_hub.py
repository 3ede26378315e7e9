"""The `kernel-fx` subcommands about Hub kernels: `variants`, `lock`, `download`, `describe-api`, `cache ls`.

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
    variants.add_argument("--only-compatible", action="store_true", help="list only the variants that fit this system")
    variants.add_argument("--json", action="store_true", help="print the variants and decisions as JSON")
    variants.set_defaults(func=_guarded(run_variants))

    describe = subparsers.add_parser("describe-api", help="a kernel's functions and layers with their flags, without importing it")
    describe.add_argument("kernel", help="Hub kernel repo (org/name) or a local kernel directory")
    pinned = describe.add_mutually_exclusive_group()
    pinned.add_argument("--revision", help="branch, tag or commit sha (default: main)")
    pinned.add_argument("--version", type=int, help="version N, i.e. branch vN")
    describe.add_argument("--backend", help="describe the variant for this backend instead of torch's")
    describe.add_argument("--json", action="store_true")
    describe.set_defaults(func=_guarded(run_describe_api))

    cache = subparsers.add_parser("cache", help="the kernels in the local cache")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True, metavar="COMMAND")
    listing = cache_commands.add_parser("ls", help="list cached kernel commits, their branches and variants")
    listing.add_argument("--cache-dir", type=Path, help="cache to list (default: KERNEL_FX_CACHE, KERNELS_CACHE or HF_HUB_CACHE)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_guarded(run_cache_ls))

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
    download.add_argument("--all-variants", action="store_true",
                          help="for a kernels.lock: every build variant of each locked commit, not only this system's")
    download.set_defaults(func=_guarded(run_download))


def run_variants(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from .hub.api import get_kernel_variants

    found = get_kernel_variants(args.repo_id, revision=args.revision, version=args.version, backend=args.backend)
    checks = [c for c in found.checks if c.accepted or not getattr(args, "only_compatible", False)]
    if getattr(args, "json", False):
        import json

        print(json.dumps({"repo_id": found.repo_id, "revision": found.revision, "commit": found.commit, "system": str(found.system),
                          "variants": [{"variant": c.name, "status": _status(c, found.chosen), "reason": c.reason} for c in checks]}, indent=2))
        return 0 if found.chosen else 1
    pinned = f" (commit {found.commit})" if found.commit and found.commit != found.revision else ""
    print(f"{found.repo_id}@{found.revision}{pinned}")
    print(f"system: {found.system}")
    if found.from_cache:
        print("offline: only the variants in the local cache are listed")
    rows = [[c.name, _status(c, found.chosen), c.reason or "-"] for c in checks]
    empty = "no compatible variants" if getattr(args, "only_compatible", False) else "no build/ variants"
    print(tabulate(rows, headers=["variant", "status", "reason"]) if rows else empty)
    return 0 if found.chosen else 1


def run_describe_api(args: argparse.Namespace) -> int:
    from .describe import describe_api

    api = describe_api(args.kernel, revision=args.revision, version=args.version, backend=args.backend)
    if args.json:
        import json

        print(json.dumps(api.as_dict(), indent=2))
        return 0
    print(f"{api.source}\nvariant: {api.variant} (from {'symbols.json' if api.from_symbols else 'the source, not imported'})")
    print("\nfunctions:")
    print("\n".join(f"  {name}" for name in api.functions) or "  (none)")
    print("\nlayers:")
    flag = lambda value: "unknown" if value is None else str(value)  # noqa: E731
    print("\n".join(f"  {la.name}  has_backward={flag(la.has_backward)}  can_torch_compile={flag(la.can_torch_compile)}"
                    for la in api.layers) or "  (none)")
    return 0


def run_cache_ls(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from .cached import cached_kernels
    from .hub import env

    root = args.cache_dir or env.hub_cache_dir()
    found = cached_kernels(root)
    if args.json:
        import json

        print(json.dumps({"cache_dir": str(root), "kernels": [k.as_dict() for k in found]}, indent=2))
        return 0
    if not found:
        print(f"No cached kernels in {root}.")
        return 0
    rows = [[f"{k.repo_type}/{k.repo_id}", ", ".join(k.refs) or "-", k.commit[:12], ", ".join(k.variants), f"{k.size / 1e6:.1f} MB"]
            for k in found]
    print(tabulate(rows, headers=["repo", "refs", "commit", "variants", "size"]))
    return 0


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
    variant_dirs = download_locked(entries, path, all_variants=getattr(args, "all_variants", False))
    for variant_dir in variant_dirs:
        print(f"verified {variant_dir}")
    print(f"{len(variant_dirs)} locked variants of {len(entries)} kernels are in the cache {env.hub_cache_dir()}")
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
