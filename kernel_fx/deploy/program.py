"""`kernel_fx.export`: a `torch.export.ExportedProgram` in which every site decided "kernel" runs its
kernel, with the report of every site attached.

The route is the eager path's: a copy of the model is kernelized (same mapping, planner, checks and
decision rule as `kernelize`), then `torch.export.export` traces it. Kernels in plain torch are traced
inline; a kernel that calls a registered op (a compiled extension's `torch.ops.<ns>.*`, or a
`torch.library.custom_op` with a fake implementation) stays one call of that op. Afterwards the
program's nodes are read back (`sites.sites_in_program`) to check that each kernel site's calls
produced nodes from its kernel's files and that no original site's did.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checks import Check
from ..checks.verification import Verify
from ..decisions import Decision, KernelizeFallback, Outcome
from ..eager.kernelize import kernelize, report
from ..errors import ArgumentTypeError, KernelFxError
from ..hub.importer import KernelSource, source_of
from ..layers import extensible_modules
from ..modes import Mode
from ..originals import installed_forward
from ..report import Report
from .lock import KernelLock
from .sites import SiteInProgram, sites_in_program

logger = logging.getLogger(__name__)

RECORD_ATTR = "kernel_fx"
EXPORT_MODE = Mode.INFERENCE | Mode.TORCH_COMPILE


@dataclass
class ExportRecord:
    """What `kernel_fx.export` put in a program (`program.kernel_fx`).

    Attributes:
        report: every site's decision, as `kernelize` would report it (`path_kind` "export").
        sites: per site path, what the program holds for it (`SiteInProgram`).
        kernels: the lock of every kernel variant whose code is in the program.
    """

    report: Report
    sites: dict[str, SiteInProgram] = field(default_factory=dict)
    kernels: tuple[KernelLock, ...] = ()

    @property
    def agrees(self) -> bool:
        """Every site's program nodes match its decision."""
        return all(s.agrees for s in self.sites.values())

    def table(self, tablefmt: str = "simple") -> str:
        """Per site: what the report says runs, and what the program holds."""
        from tabulate import tabulate

        decided = {d.path: d.outcome.value for d in self.report.decisions}
        rows = [[path, decided.get(path, "-"), s.describe(), "yes" if s.agrees else "NO"] for path, s in self.sites.items()]
        return tabulate(rows, headers=["site", "runs", "in the program", "agrees"], tablefmt=tablefmt)

    def render(self, fmt: str = "text") -> str:
        """The report, then the program check, then the kernels the program needs."""
        lines = [f"{k.repo} ({k.variant}): " + _how_it_runs(k) for k in self.kernels]
        parts = [self.report.render(fmt), "== in the exported program ==", self.table("github" if fmt == "markdown" else "simple")]
        if lines:
            parts.append("kernels:\n" + "\n".join(f"  {line}" for line in lines))
        return "\n\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"report": self.report.to_dict(), "kernels": [k.as_dict() for k in self.kernels],
                "sites": {p: {"calls": s.calls, "nodes": s.nodes, "kernel_nodes": s.kernel_nodes, "ops": dict(s.ops),
                              "agrees": s.agrees} for p, s in self.sites.items()}}

    def __str__(self) -> str:
        return self.render()


def _how_it_runs(kernel: KernelLock) -> str:
    if kernel.compiled:
        return f"ops {', '.join(kernel.ops)} from {', '.join(kernel.libraries)}"
    if kernel.packed:
        return f"ops {', '.join(kernel.ops)} registered in Python (load_package imports the kernel; plain torch cannot)"
    return "traced inline"


def export(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any] | None = None,
    *,
    dynamic_shapes: Any = None,
    mode: Mode = EXPORT_MODE,
    device: str | torch.device | None = None,
    use_fallback: bool | KernelizeFallback = True,
    check_outputs: bool = True,
    verify: bool | Verify | Mapping[Any, Any] = False,
    checks: Sequence[Check] = (),
    strict: bool = False,
) -> torch.export.ExportedProgram:
    """Export `model` with its kernels: `torch.export.export` of a kernelized copy (`model` is not changed).

    The mapping, `mode`, `device` and `use_fallback` work as for `kernelize`; the default mode is
    `Mode.INFERENCE | Mode.TORCH_COMPILE` (the program is compiled, so a kernel with
    `can_torch_compile = False` keeps the original, with that reason).

    Checks: torch.export's tracing gives kernel_fx no point to check a call (the compiled path checks
    while dynamo traces), so the checks run before it, as on kernelize's eager first calls: a
    kernelized copy runs once on `args`/`kwargs` (under `torch.no_grad()`), every kernel site's first
    call going through the pipeline — `check_outputs` (`wrong_output`, on fakes), `verify`
    (`numerically_different`, against the original) and `checks`, as `kernelize` takes them. Sites a
    check refuses keep their original in the program, with the check's reason in the report. The run
    uses its own copy, so state the call writes (a KV cache) does not reach the program;
    `check_outputs=False` (and no `verify` or `checks`) skips it. With `dynamic_shapes`, only the
    example inputs' shapes were checked.

    The record
    (`kernel_fx.export_record(program)`, an `ExportRecord`) holds the report of every site, what the
    program holds per site, and the lock of every kernel in it. A kernel site whose traced calls left
    no node from its kernel (or an original site with kernel nodes) raises `KernelFxError`.

    >>> import torch, kernel_fx
    >>> from kernel_fx.demo import build_demo_model, DemoConfig
    >>> model = build_demo_model(DemoConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64, vocab_size=64))
    >>> ids = torch.zeros(1, 8, dtype=torch.long)
    >>> with kernel_fx.use_kernel_mapping(kernel_fx.default_mapping()):
    ...     program = kernel_fx.export(model, (ids,))
    >>> kernel_fx.export_record(program).report.summary()
    '6 sites: 6 kernel, 0 original'
    >>> torch.testing.assert_close(program.module()(ids), model(ids))
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"kernel_fx.export(model={type(model).__name__}) needs an nn.Module.")
    if not isinstance(args, tuple):
        raise ArgumentTypeError(f"kernel_fx.export(args={type(args).__name__}) needs a tuple of positional inputs, e.g. (input_ids,).")
    kwargs = dict(kwargs or {})
    checked = _checked_decisions(model, args, kwargs, mode=mode, device=device, use_fallback=use_fallback,
                                 check_outputs=check_outputs, verify=verify, checks=checks)
    refused = {d.path for d in checked or () if d.rejected is not None and d.rejected.check is not None}
    kernelized = kernelize(copy.deepcopy(model), mode=mode, device=device, use_fallback=use_fallback,
                           filter_fn=(lambda _module, path: path not in refused) if refused else None)
    program = torch.export.export(kernelized, args, kwargs, dynamic_shapes=dynamic_shapes, strict=strict)
    decisions = checked if checked is not None else report(kernelized).decisions
    record = _record(kernelized, program, [replace(d, path_kind="export") for d in decisions])
    disagree = [s for s in record.sites.values() if not s.agrees]
    if disagree:
        raise KernelFxError("The exported program does not run what the report says at "
                            + "; ".join(f"{s.path} ({s.describe()})" for s in disagree)
                            + ". Please report this with the model: kernel_fx's program check found it.")
    setattr(program, RECORD_ATTR, record)
    return program


def export_record(program: torch.export.ExportedProgram) -> ExportRecord:
    """The `ExportRecord` `kernel_fx.export` attached to `program`."""
    record = getattr(program, RECORD_ATTR, None)
    if not isinstance(record, ExportRecord):
        raise KernelFxError(f"{type(program).__name__} has no kernel_fx record; make it with kernel_fx.export(model, args).")
    return record


def _checked_decisions(model: nn.Module, args: tuple, kwargs: dict, *, check_outputs: bool, verify: Any, checks: Sequence[Check],
                       **kernelize_options: Any) -> list[Decision] | None:
    """The decisions of a kernelized copy of `model` after one call on the example inputs ran each
    kernel site's checks (None when no check is asked for)."""
    if not (check_outputs or verify or checks):
        return None
    checked = kernelize(copy.deepcopy(model), check_outputs=check_outputs, verify=verify, checks=checks, **kernelize_options)
    with torch.no_grad():
        checked(*args, **kwargs)
    return report(checked).decisions


def _record(kernelized: nn.Module, program: torch.export.ExportedProgram, decisions: list[Decision]) -> ExportRecord:
    kernel_paths = {d.path for d in decisions if d.outcome is not Outcome.ORIGINAL}
    sources: dict[str, KernelSource] = {}  # site path -> the kernel the report says runs there
    registered = {path for path, _ in kernelized.named_modules()}
    function_hosts = {}  # sites of marked functions, which `named_modules` does not list -> their host module
    for path, module in extensible_modules(kernelized):
        source = _kernel_source(module) if path in kernel_paths else None
        if source is not None:
            sources[path] = source
        if path not in registered:
            function_hosts[path] = path.rpartition(".")[0]
    by_dir = {str(Path(s.path).resolve()): s for s in sources.values()}
    sites = sites_in_program(program.graph, {d.path: sources[d.path].path if d.path in sources else None for d in decisions},
                             kernel_dirs=by_dir, function_hosts=function_hosts)
    ops: dict[str, set[str]] = {folder: set() for folder in by_dir}
    used = set()
    for path in sources:
        site = sites[path]
        ops[site.kernel_dir].update(site.ops)
        if site.kernel_nodes:
            used.add(site.kernel_dir)
    kernels = tuple(KernelLock.of(by_dir[folder], tuple(ops[folder])) for folder in sorted(used))
    return ExportRecord(Report(decisions), sites, kernels)


def _kernel_source(module: nn.Module) -> KernelSource | None:
    """The source of the kernel an installed forward runs (one kernel per site under a fixed mode)."""
    forward = installed_forward(module)
    if forward is None:
        return None
    for fn, repo in zip(forward.table, forward.repos):
        kernel = getattr(fn, "kernel_class", None)
        if repo is not None and kernel is not None:
            return source_of(kernel)
    return None
