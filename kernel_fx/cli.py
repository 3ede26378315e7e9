"""`kernel-fx`: argument parsing only; every command calls the public API.

    kernel-fx demo                      the main job: demo model eager / kernelized / compiled
    kernel-fx report MODULE:FUNCTION    report on your model, with a mapping you name
    kernel-fx export MODULE:FUNCTION -o model.pt2   export and package with the kernels kept; print the report
    kernel-fx variants REPO             build variants of a Hub kernel repo, accepted or not
    kernel-fx describe-api REPO|DIR     a kernel's functions and layers, without importing it
    kernel-fx cache ls                  the kernels in the local cache
    kernel-fx lock / download           pin kernels in a lock file; pre-fetch them
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kernel-fx", description="Faster kernels from the Hugging Face Hub, with a report of what ran.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run the demo model eager, kernelized and compiled; check and report")
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    demo.add_argument("--layers", type=int, default=None, help="decoder layers of the demo model")
    demo.add_argument("--no-compile", action="store_true", help="skip the torch.compile runs")
    demo.add_argument("--json", action="store_true", help="print the reports as JSON")
    demo.add_argument("--html", metavar="FILE", default=None, help="also write the reports as one self-contained HTML page")
    demo.add_argument("--without", metavar="LAYER", action="append", default=[],
                      help="leave this bundled layer out of the mapping, to see a fallback (repeatable)")
    demo.set_defaults(func=_run_demo)

    report = commands.add_parser("report", help="report what kernel_fx would do on your model")
    report.add_argument("target", help="MODULE:FUNCTION returning a model, or (model, example inputs)")
    report.add_argument("--mapping", default=None, help="MODULE:NAME of a mapping dict or a function returning one (default: the bundled kernels)")
    report.add_argument("--device", default=None)
    report.add_argument("--compile", action="store_true", help="also show what hubkernels would do")
    report.add_argument("--json", action="store_true")
    report.add_argument("--html", metavar="FILE", default=None, help="also write the report as one self-contained HTML page")
    report.set_defaults(func=_run_report)

    export = commands.add_parser("export", help="export your model with its kernels into an AOTInductor .pt2; print the report")
    export.add_argument("target", help="MODULE:FUNCTION returning (model, args) or (model, args, kwargs)")
    export.add_argument("-o", "--output", required=True, help="the .pt2 to write")
    export.add_argument("--mapping", default=None, help="MODULE:NAME of a mapping dict or a function returning one (default: the bundled kernels)")
    export.add_argument("--device", default=None)
    export.add_argument("--json", action="store_true")
    export.set_defaults(func=_run_export)

    try:
        from .cli_hub import add_hub_commands
    except ImportError:  # pragma: no cover - the hub commands ship with kernel_fx
        pass
    else:
        add_hub_commands(commands)
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    from .demo.run import run_demo

    return run_demo(device=args.device, layers=args.layers, compile=not args.no_compile, as_json=args.json, html=args.html,
                    without=tuple(args.without))


def _run_report(args: argparse.Namespace) -> int:
    from .demo.run import run_report

    return run_report(args.target, mapping=args.mapping, device=args.device, compile=args.compile, as_json=args.json, html=args.html)


def _run_export(args: argparse.Namespace) -> int:
    from .deploy.command import run_export

    return run_export(args.target, args.output, mapping=args.mapping, device=args.device, as_json=args.json)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
