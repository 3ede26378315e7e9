"""`download_kernels(args)` with `args.project_dir` and `args.all_variants`: `kernel-fx download`."""


def download_kernels(args):
    import argparse

    from kernel_fx.cli_hub import run_download

    lockfile = args.project_dir / "kernels.lock"
    status = run_download(argparse.Namespace(lockfile=lockfile, all_variants=args.all_variants))
    if status:
        raise SystemExit(status)
