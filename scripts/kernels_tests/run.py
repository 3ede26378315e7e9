"""Run the layer tests of the `kernels` 0.19.1 sdist against kernel_fx (through a name shim) and
against `kernels` itself, offline, from a scratch folder outside the repository; print the figure.

    pip download --no-deps --no-binary kernels kernels==0.19.1 -d /tmp/k --no-clean   # or any unpacked sdist
    python scripts/kernels_tests/run.py --sdist /path/to/kernels-0.19.1 [--work /tmp/kernels-tests]

What runs: `tests/test_layer.py`, `tests/test_func.py`, `tests/test_kernel_locking.py`, and CPU copies
of their `cuda_only` tests (the file with "cuda" replaced by "cpu"; only the copies the real
`kernels` passes count, the others are not sensible on a CPU). The kernel repos they load come from
`hub_cache.py`, an offline huggingface_hub cache built in the scratch folder. A test counts when
`kernels` passes it; kernel_fx's failures are split into the documented ones (`documented.py`,
each a row of the README's differences table) and the rest. Nothing of the sdist is copied into
this repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from documented import DOCUMENTED  # noqa: E402
from hub_cache import build_cache  # noqa: E402

FILES = ("test_layer.py", "test_func.py", "test_kernel_locking.py")
DATA = ("kernel_locking", "layer_locking", "conftest.py")

PLUGIN = '''
import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "cpu_copy: a cuda_only test of kernels, copied to run on the CPU")


def pytest_collection_modifyitems(config, items):
    # In the CPU copies only the former cuda_only tests run; the rest ran in the originals.
    keep = [i for i in items if not i.fspath.basename.endswith("_cpu.py") or i.get_closest_marker("cpu_copy")]
    deselected = [i for i in items if i not in keep]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = keep
'''


def cpu_copy(text: str) -> str:
    """The test file with its cuda_only tests marked `cpu_copy` and every "cuda" device made "cpu"."""
    return text.replace("@pytest.mark.cuda_only", "@pytest.mark.cpu_copy").replace('"cuda"', '"cpu"')


def prepare(tests: Path, work: Path) -> Path:
    """The scratch test folder: the sdist's test files, their CPU copies, lock data, and the plugin."""
    scratch = work / "tests"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    for name in FILES:
        text = (tests / name).read_text()
        (scratch / name).write_text(text)
        if "cuda_only" in text:
            (scratch / name.replace(".py", "_cpu.py")).write_text(cpu_copy(text))
    for name in DATA:
        source = tests / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, scratch / name)
    (scratch / "kernels_tests_plugin.py").write_text(PLUGIN)
    (scratch / "pytest.ini").write_text((tests.parent / "pytest.ini").read_text())
    return scratch


def run(scratch: Path, work: Path, library: str) -> dict[str, str]:
    """Run pytest in `scratch` for `library` ("kernels" or "kernel_fx"); {test id: outcome}."""
    cache = work / f"hf-{library}"
    shutil.rmtree(cache, ignore_errors=True)
    build_cache(cache / "hub")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "KERNEL_FX_", "KERNELS_")) and k not in ("LOCAL_KERNELS", "PYTHONPATH")}
    env.update(HF_HOME=str(cache), HF_HUB_CACHE=str(cache / "hub"), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               PYTHONDONTWRITEBYTECODE="1")
    path = [str(scratch)]
    if library == "kernel_fx":
        path = [str(HERE / "shim"), str(REPO_ROOT), *path]
        # Offline, `kernels` skips its publisher check (it asks the Hub); upstream runs online, where
        # these organisations are verified publishers. kernel_fx checks offline too: tell it the same.
        env["KERNEL_FX_TRUSTED"] = "kernels-test,kernels-community"
    env["PYTHONPATH"] = os.pathsep.join(path)
    report = work / f"junit-{library}.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "kernels_tests_plugin", "-p", "no:cacheprovider",
           f"--junitxml={report}", "-o", "junit_family=xunit1", *sorted(p.name for p in scratch.glob("test_*.py"))]
    subprocess.run(cmd, cwd=scratch, env=env, check=False)
    return outcomes(report)


def outcomes(report: Path) -> dict[str, str]:
    results = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        test_id = f"{case.get('file') or case.get('classname').replace('.', '/') + '.py'}::{case.get('name')}"
        kinds = {child.tag for child in case}
        results[test_id] = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
    return results


def tally(oracle: dict[str, str], ours: dict[str, str]) -> dict:
    counted = sorted(t for t, outcome in oracle.items() if outcome == "passed")
    failed = [t for t in counted if ours.get(t) != "passed"]
    documented = {t: DOCUMENTED[t] for t in failed if t in DOCUMENTED}
    return {"counted": len(counted), "passed": len(counted) - len(failed), "failed": len(failed),
            "documented": len(documented), "undocumented": sorted(set(failed) - set(documented)),
            "documented_failures": documented,
            "oracle_not_passed": sorted(t for t, o in oracle.items() if o != "passed")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, required=True, help="the unpacked kernels 0.19.1 sdist (holding kernels/tests)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/kernels-tests"), help="scratch folder, outside the repo")
    parser.add_argument("--out", type=Path, help="write the figure as JSON here")
    args = parser.parse_args(argv)
    tests = next(p for p in (args.sdist / "kernels" / "tests", args.sdist / "tests") if p.is_dir())
    work = args.work.resolve()
    if REPO_ROOT in (work, *work.parents):
        parser.error(f"--work {work} is inside the repository; the sdist's tests must run outside it")
    scratch = prepare(tests, work)
    oracle = run(scratch, work, "kernels")
    ours = run(scratch, work, "kernel_fx")
    figure = tally(oracle, ours)
    if args.out:
        args.out.write_text(json.dumps(figure, indent=2) + "\n")
    print(json.dumps({k: v for k, v in figure.items() if k != "oracle_not_passed"}, indent=2))
    print(f"kernels 0.19.1 layer tests on kernel_fx: {figure['passed']} passed, {figure['failed']} failed "
          f"({figure['documented']} documented) of {figure['counted']} that kernels passes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
