"""The main job: the demo model eager, kernelized and compiled with hubkernels, checked and reported.

Everything here returns data or writes to the stream it is given; `kernel-fx demo` is the edge.
"""

from __future__ import annotations

import copy
import importlib
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import torch
from torch import nn

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """One way of running the model: its output error against eager, and its time."""

    name: str
    median_ms: float
    max_abs_error: float
    first_call_s: float = 0.0


@dataclass
class DemoResult:
    device: str
    dtype: str
    shape: tuple[int, int]
    runs: list[Run] = field(default_factory=list)
    reports: dict[str, Any] = field(default_factory=dict)
    mapping: dict[str, Any] = field(default_factory=dict)  # the kernel mapping the runs used

    def timing_table(self, tablefmt: str = "simple") -> str:
        from tabulate import tabulate

        base = self.runs[0].median_ms
        rows = [
            [r.name, f"{r.median_ms:.3f}", f"{base / r.median_ms:.2f}x", f"{r.max_abs_error:.2e}", f"{r.first_call_s:.1f}"]
            for r in self.runs
        ]
        headers = ["run", "median ms", "vs eager", "max |err| vs eager", "first call s"]
        return tabulate(rows, headers=headers, tablefmt=tablefmt)


def _timer(device: str) -> Callable[[Callable[[], Any]], float]:
    def time_once(fn: Callable[[], Any]) -> float:
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        start_s = time.perf_counter()
        fn()
        return (time.perf_counter() - start_s) * 1e3

    return time_once


def median_ms(fn: Callable[[], Any], device: str, warmup: int = 3, repeats: int = 10) -> float:
    """The median time of `fn()` in ms after `warmup` calls (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    time_once = _timer(device)
    return statistics.median(time_once(fn) for _ in range(repeats))


def _progress(out: IO[str] | None, message: str) -> None:
    if out is not None:
        out.write(f"[kernel-fx] {message}\n")
        out.flush()


def demo_mapping(without: tuple[str, ...] = ()) -> dict[str, Any]:
    """The bundled kernels' mapping less the layers in `without` (their sites keep the original,
    with the reason "no mapping": how a fallback looks in the reports).

    >>> sorted(demo_mapping(("Attention", "RMSNorm")))
    ['AddRMSNorm', 'ApplyRotary', 'SiluAndMul']
    """
    from kernel_fx.defaults import BUNDLED_LAYERS, default_mapping

    unknown = sorted(set(without) - set(BUNDLED_LAYERS))
    if unknown:
        raise ValueError(f"Cannot leave out {', '.join(map(repr, unknown))}: not a bundled layer (bundled layers: {', '.join(BUNDLED_LAYERS)}).")
    return {name: repos for name, repos in default_mapping().items() if name not in without}


def run_demo_model(
    *, device: str | None = None, layers: int | None = None, compile: bool = True, progress: IO[str] | None = None,
    without: tuple[str, ...] = (),
) -> DemoResult:
    """Build the demo model and run it eager, kernelized, and compiled with hubkernels (with the
    bundled kernels, less the layers named in `without`)."""
    import kernel_fx
    from kernel_fx.demo.model import DemoConfig, build_demo_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.startswith("cuda")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    config = DemoConfig(num_hidden_layers=layers or (8 if on_gpu else 2), hidden_size=1024 if on_gpu else 256,
                        intermediate_size=2816 if on_gpu else 688, num_attention_heads=16 if on_gpu else 8,
                        num_key_value_heads=8 if on_gpu else 4, max_position_embeddings=2048)
    batch, seq = (4, 1024) if on_gpu else (2, 64)
    _progress(progress, f"building the demo model ({config.num_hidden_layers} layers, hidden {config.hidden_size}) on {device} in {dtype}")
    reference = build_demo_model(config, device=device, dtype=dtype).eval()
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    result = DemoResult(device=device, dtype=str(dtype).replace("torch.", ""), shape=(batch, seq), mapping=demo_mapping(without))

    with torch.no_grad():
        expected = reference(ids)
        result.runs.append(Run("eager", median_ms(lambda: reference(ids), device), 0.0))

        _progress(progress, "kernelizing with the bundled kernels")
        kernelized = copy.deepcopy(reference)
        with kernel_fx.use_kernel_mapping(result.mapping):
            kernel_fx.kernelize(kernelized)
        result.reports["kernelize"] = kernel_fx.report(kernelized)
        error = (kernelized(ids) - expected).abs().max().item()
        result.runs.append(Run("eager + kernelize", median_ms(lambda: kernelized(ids), device), error))

        if compile:
            _progress(progress, "compiling with backend='hubkernels' (inner: inductor); the first call compiles")
            with kernel_fx.use_kernel_mapping(result.mapping):
                compiled = torch.compile(copy.deepcopy(reference), backend="hubkernels")
                start = time.perf_counter()
                out = compiled(ids)
                first = time.perf_counter() - start
                error = (out - expected).abs().max().item()
                result.reports["hubkernels"] = kernel_fx.last_compile_report()
                result.runs.append(Run("torch.compile hubkernels", median_ms(lambda: compiled(ids), device), error, first))
    return result


def render_demo(result: DemoResult, out: IO[str], *, as_json: bool = False) -> None:
    """Write the demo's reports, graph diff and timing table to `out`."""
    if as_json:
        import json

        data = {
            "device": result.device,
            "dtype": result.dtype,
            "shape": result.shape,
            "runs": [r.__dict__ for r in result.runs],
            "reports": {name: report.to_dict() for name, report in result.reports.items()},
        }
        out.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    for name, report in result.reports.items():
        out.write(f"\n== {name} report ==\n{report.render() if hasattr(report, 'render') else report}\n")
    out.write(f"\n== timing ({result.device}, {result.dtype}, batch x seq = {result.shape[0]} x {result.shape[1]}) ==\n")
    out.write(result.timing_table() + "\n")


def demo_page(result: DemoResult) -> str:
    """The demo's reports, timings and mapping as one self-contained HTML page."""
    from kernel_fx.html import Timing, render_page

    timings = [Timing(r.name, r.median_ms, f"max |err| vs eager {r.max_abs_error:.2e}, first call {r.first_call_s:.1f} s")
               for r in result.runs]
    title = f"kernel-fx demo: {result.device}, {result.dtype}, batch x seq = {result.shape[0]} x {result.shape[1]}"
    return render_page(result.reports, title=title, timings=timings, mapping=result.mapping)


def write_html(page: str, path: str) -> None:
    """Write `page` to `path` and say where on standard error (stdout keeps the text report)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    sys.stderr.write(f"[kernel-fx] wrote {path} ({len(page.encode()) / 1024:.0f} KiB)\n")


def run_demo(*, device: str | None = None, layers: int | None = None, compile: bool = True, as_json: bool = False,
             html: str | None = None, without: tuple[str, ...] = ()) -> int:
    """`kernel-fx demo`: run, check every output against eager, print reports and timings
    (and write them as an HTML page to `html`)."""
    result = run_demo_model(device=device, layers=layers, compile=compile, progress=sys.stderr, without=without)
    render_demo(result, sys.stdout, as_json=as_json)
    if html:
        write_html(demo_page(result), html)
    tolerance = 5e-2 if result.dtype == "bfloat16" else 1e-3
    worst = max(r.max_abs_error for r in result.runs)
    if worst > tolerance:
        sys.stderr.write(f"[kernel-fx] FAILED: max error {worst:.2e} above tolerance {tolerance:.0e}\n")
        return 1
    return 0


def demo_example() -> tuple[nn.Module, torch.Tensor]:
    """A small demo model and example input ids: `kernel-fx report kernel_fx.demo.run:demo_example`."""
    from kernel_fx.demo.model import DemoConfig, build_demo_model

    config = DemoConfig(num_hidden_layers=2)
    return build_demo_model(config), torch.randint(0, config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))


def import_object(spec: str) -> Any:
    """The object `MODULE:NAME` names (the current directory importable, as for `python -m`); also
    what `kernel-fx export` reads its target and mapping with."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{spec!r} is not MODULE:NAME (e.g. mypkg.models:build_model).")
    sys.path.insert(0, ".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    finally:
        sys.path.pop(0)


def run_report(target: str, *, mapping: str | None, device: str | None, compile: bool, as_json: bool, html: str | None = None) -> int:
    """`kernel-fx report`: what kernelize (and hubkernels) would do on a user's model; changes nothing."""
    import kernel_fx
    from kernel_fx.defaults import default_mapping

    built = import_object(target)()
    model, inputs = (built if isinstance(built, tuple) else (built, ()))
    if not isinstance(model, nn.Module):
        raise TypeError(f"{target} returned {type(model).__name__}; expected an nn.Module or (module, example inputs).")
    inputs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    chosen = import_object(mapping) if mapping else default_mapping()
    chosen = chosen() if callable(chosen) else chosen
    with kernel_fx.use_kernel_mapping(chosen):
        explained = kernel_fx.explain(model, *inputs, device=device, compile=compile and bool(inputs))
    sys.stdout.write((explained.to_json() if as_json else explained.render()) + "\n")
    if html:
        from kernel_fx.html import render_page

        reports = {"kernelize": explained.eager, **({"hubkernels": explained.compiled} if explained.compiled is not None else {})}
        write_html(render_page(reports, title=f"kernel-fx report {target}", mapping=chosen), html)
    return 0
