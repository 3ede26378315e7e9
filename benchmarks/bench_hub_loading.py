"""How fast Hub kernels load from a warm cache, each figure measured in fresh processes.

    python benchmarks/bench_hub_loading.py [--runs 7]

Budgets (issue 3): `get_kernel` from a warm cache <= 50 ms beyond `import torch` (this includes
`import kernel_fx`); `kernelize` of a model using 8 distinct Hub kernels from a warm cache <= 100 ms.

The kernels are published on the loopback Hub the tests use (tests/hub/hub_server.py), downloaded
once through huggingface_hub into a temporary cache, then loaded by child processes whose
HF_ENDPOINT points at a closed port: a figure that needed the network would fail, not look good.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "hub"), str(ROOT / "tests")]

from hub_server import FakeHub, closed_port_url  # noqa: E402
from kernel_repos import make_kernel_repo  # noqa: E402
from tabulate import tabulate  # noqa: E402

N_KERNELS = 8
LAYER = '''
import torch
from torch import nn


class Scale{i}(nn.Module):
    can_torch_compile = True

    def forward(self, x):
        return torch.mul(x, self.weight)
'''

GET_KERNEL = """
import time, json
import torch
t0 = time.perf_counter()
import kernel_fx
t1 = time.perf_counter()
kernel = {call}
t2 = time.perf_counter()
assert kernel.layers.Scale0
print(json.dumps({{"import_kernel_fx": (t1 - t0) * 1e3, "load": (t2 - t1) * 1e3, "total": (t2 - t0) * 1e3}}))
"""

KERNELIZE = """
import time, json
import torch
from torch import nn
t0 = time.perf_counter()
import kernel_fx
from kernel_fx import LayerRepository, kernelize, use_kernel_forward_from_hub

commits = {commits!r}
layers = []
for i in range({n}):
    def forward(self, x):
        return x * self.weight
    cls = use_kernel_forward_from_hub(f"Scale{{i}}")(type(f"Scale{{i}}", (nn.Module,), {{"forward": forward}}))
    layer = cls()
    layer.weight = nn.Parameter(torch.ones(4))
    layers.append(layer)
model = nn.Sequential(*layers).eval()
kernel_fx.register_kernel_mapping({{
    f"Scale{{i}}": {{"cpu": LayerRepository(f"kernels-community/bench-{{i}}", layer_name=f"Scale{{i}}", {pin})}}
    for i in range({n})
}})
t1 = time.perf_counter()
kernelize(model, device="cpu")
t2 = time.perf_counter()
kernelize(model, device="cpu")
t3 = time.perf_counter()
assert kernel_fx.report(model).summary().startswith("{n} sites: {n} kernel"), kernel_fx.report(model)
print(json.dumps({{"import_kernel_fx": (t1 - t0) * 1e3, "kernelize": (t2 - t1) * 1e3, "kernelize_again": (t3 - t2) * 1e3}}))
"""


def publish_and_warm(cache: Path, work: Path) -> tuple[list[str], Path]:
    """Publish N kernels (branch v1) on a loopback Hub, download each once; return commits and a lock file."""
    hub = FakeHub().start()
    os.environ.update(HF_ENDPOINT=hub.url, KERNEL_FX_CACHE=str(cache), HF_HUB_DISABLE_PROGRESS_BARS="1")
    import kernel_fx
    from kernel_fx.hub.locks import lock_kernels, write_lockfile
    from kernel_fx.hub.specs import KernelSpec
    from kernel_fx.hub.variants import system_info

    commits = []
    for i in range(N_KERNELS):
        files = {"__init__.py": "from . import layers\n", "layers.py": LAYER.format(i=i)}
        root = make_kernel_repo(work / f"bench-{i}", {"torch-cpu": files}, kernel_id=f"bench_kernel_{i}")
        commits.append(hub.publish(f"kernels-community/bench-{i}", root, branch="v1"))
        kernel_fx.get_kernel(f"kernels-community/bench-{i}", version=1, backend="cpu")  # fills refs/v1 too
        kernel_fx.get_kernel(f"kernels-community/bench-{i}", revision=commits[-1], backend="cpu")
    lockfile = work / "kernel-fx.lock"
    write_lockfile(lockfile, lock_kernels([KernelSpec("kernels-community/bench-0", version=1)], system_info("cpu")))
    hub.stop()
    return commits, lockfile


def run_child(code: str, env: dict[str, str], runs: int) -> dict[str, float]:
    """Medians of the figures `code` prints, over `runs` fresh interpreters."""
    samples: dict[str, list[float]] = {}
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"benchmark child failed:\n{out.stderr}")
        for key, value in json.loads(out.stdout.strip().splitlines()[-1]).items():
            samples.setdefault(key, []).append(value)
    return {key: statistics.median(values) for key, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="fresh processes per figure (median reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kernel_fx_bench_") as tmp:
        rows = measure(Path(tmp), args.runs)
    import torch

    print(f"torch {torch.__version__}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs; medians of {args.runs} fresh processes, ms")
    print(tabulate(rows, headers=["case", "ms", "budget", "", "figures (ms)"]))


def measure(work: Path, runs: int) -> list[list]:
    """Fill a cache in `work`, then time each case in fresh processes; one table row per case."""
    cache = work / "cache"
    commits, lockfile = publish_and_warm(cache, work)
    base = {**os.environ, "KERNEL_FX_CACHE": str(cache), "HF_ENDPOINT": closed_port_url(),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    base.pop("HF_HUB_OFFLINE", None)
    offline = {**base, "HF_HUB_OFFLINE": "1"}
    repo0 = "kernels-community/bench-0"
    cases = [
        ("get_kernel(revision=<commit>), online mode", GET_KERNEL.format(
            call=f"kernel_fx.get_kernel({repo0!r}, revision={commits[0]!r}, backend='cpu')"), base, "total", 50),
        ("get_kernel(version=1), HF_HUB_OFFLINE=1", GET_KERNEL.format(
            call=f"kernel_fx.get_kernel({repo0!r}, version=1, backend='cpu')"), offline, "total", 50),
        ("load_kernel(lockfile=...), sha256-verified", GET_KERNEL.format(
            call=f"kernel_fx.load_kernel({repo0!r}, lockfile={str(lockfile)!r}, backend='cpu')"), base, "total", 50),
        (f"kernelize, {N_KERNELS} kernels pinned by commit", KERNELIZE.format(commits=commits, n=N_KERNELS, pin="revision=commits[i]"), base, "kernelize", 100),
        (f"kernelize, {N_KERNELS} kernels by version, HF_HUB_OFFLINE=1",
         KERNELIZE.format(commits=commits, n=N_KERNELS, pin="version=1"), offline, "kernelize", 100),
    ]
    rows = []
    for name, code, env, key, budget in cases:
        figures = run_child(code, env, runs)
        detail = ", ".join(f"{k} {v:.1f}" for k, v in figures.items())
        rows.append([name, f"{figures[key]:.1f}", budget, "ok" if figures[key] <= budget else "OVER", detail])
    return rows


if __name__ == "__main__":
    main()
