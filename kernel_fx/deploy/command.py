"""`kernel-fx export MODULE:FUNCTION -o model.pt2`: export and package a user's model, print the report.

FUNCTION returns `(model, args)` or `(model, args, kwargs)`, as `kernel-fx report` takes it (a bare
input is read as `(input,)`); `--mapping MODULE:NAME` names a mapping dict or a function returning
one (default: the kernels bundled with kernel_fx).
"""

from __future__ import annotations

import json
import sys
from typing import IO, Any

from torch import nn

from ..defaults import default_mapping
from ..demo.run import import_object
from ..errors import ArgumentTypeError
from ..mapping import use_kernel_mapping
from .package import library_members, package
from .program import export, export_record


def run_export(target: str, output: str, *, mapping: str | None = None, device: str | None = None, as_json: bool = False,
               out: IO[str] | None = None) -> int:
    """Export, package into `output`, and write the report (and how to load the package) to `out`."""
    out = out or sys.stdout
    model, args, kwargs = model_and_inputs(import_object(target)(), target)
    chosen = import_object(mapping) if mapping else default_mapping
    chosen = chosen() if callable(chosen) else chosen
    with use_kernel_mapping(chosen):
        program = export(model, args, kwargs, device=device)
    record = export_record(program)
    written = package(program, output)
    members = library_members(written)
    if as_json:
        out.write(json.dumps({**record.to_dict(), "package": str(written), "libraries": members}, indent=2, default=str) + "\n")
        return 0
    out.write(record.render() + "\n\n")
    out.write(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB)\n")
    out.write(f"load: kernel_fx.load_package({str(written)!r})\n")
    if members:
        out.write("without kernel_fx, load the kernel libraries first:\n")
        for member in members:
            out.write(f"  torch.ops.load_library(zipfile.ZipFile({str(written)!r}).extract({member!r}, 'kernels'))\n")
    out.write(f"  model = torch._inductor.aoti_load_package({str(written)!r})\n")
    return 0


def model_and_inputs(built: Any, target: str) -> tuple[nn.Module, tuple, dict]:
    """`(model, args, kwargs)` from what FUNCTION returned."""
    parts = built if isinstance(built, tuple) else (built,)
    model, args, kwargs = (*parts, *((), {})[len(parts) - 1:])[:3] if 1 <= len(parts) <= 3 else (None, (), {})
    if not isinstance(model, nn.Module) or not isinstance(kwargs, dict):
        raise ArgumentTypeError(f"{target} returned {type(built).__name__}; expected (model, args) or (model, args, kwargs) "
                                "with an nn.Module, a tuple of inputs and a dict of keyword inputs.")
    return model, args if isinstance(args, tuple) else tuple(args) if isinstance(args, list) else (args,), kwargs


