"""The long fuzz run of issue 14: seeded random models compared against eager, kernelized and
compiled with `hubkernels` (inner eager / aot_eager, inductor on every `--inductor-every`th case).

    python benchmarks/fuzz_long.py [--cases 1000] [--start 0] [--inductor-every 50] [--out FILE]

The models, kernels and comparisons are tests/fuzz/fuzzing.py's (the CI run takes a few of the
same cases). Prints, and writes as JSON: cases, runs, sites substituted (kernel, opaque kernel)
and skipped by reason, wrong outputs and crashes with their seeds (`make_case(seed)` rebuilds one).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "fuzz")]

import fuzzing  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--inductor-every", type=int, default=50, help="every Nth case compiles with inductor (0: never)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fuzz-long.json")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # opaque kernels falling back log a warning each
    substituted: Counter = Counter()
    skipped: Counter = Counter()
    failures: list[dict] = []
    upstream: list[dict] = []  # wrong the same way with the inner backend alone: torch's, not kernel_fx's
    runs = 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        repos = fuzzing.build_repos(Path(tmp))
        for i, seed in enumerate(range(args.start, args.start + args.cases)):
            inductor = bool(args.inductor_every) and i % args.inductor_every == args.inductor_every - 1
            result = fuzzing.run_case(fuzzing.make_case(seed, inductor=inductor), repos)
            runs += result.runs
            substituted.update(result.substituted)
            skipped.update(result.skipped)
            if result.upstream:
                upstream.append({"seed": seed, "inductor": inductor, "wrong": result.upstream})
            if result.failed:
                failures.append({"seed": seed, "inductor": inductor, "wrong": result.wrong, "crashed": result.crashed})
                print(f"seed {seed}: {(result.wrong + result.crashed)[0][:300]}", flush=True)
            if (i + 1) % 50 == 0:
                print(f"{i + 1} cases, {len(failures)} failed, {time.perf_counter() - started:.0f} s", flush=True)
    figures = {
        "cases": args.cases, "first_seed": args.start, "runs": runs, "seconds": round(time.perf_counter() - started, 1),
        "sites_substituted": dict(substituted), "sites_skipped_by_reason": dict(skipped.most_common()),
        "wrong_outputs": sum(len(f["wrong"]) > 0 for f in failures), "crashes": sum(len(f["crashed"]) > 0 for f in failures),
        "failures": failures, "upstream_wrong": len(upstream), "upstream": upstream, "torch": torch.__version__, "machine": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2))
    print(json.dumps({k: v for k, v in figures.items() if k not in ("failures", "upstream")}, indent=2))


if __name__ == "__main__":
    main()
