"""What a check sees of a site: the same questions on every path, answered by each path its way.

A `Subject` is one site as one path has it — the eager first call of an input signature (real
values), a site of the compiled graph pass (dynamo's example values), a call traced with a kernel
`kernelize` installed or chosen while dynamo traced (fake values at trace time), a `call_module`
node of `kernelize_graph` (fake values from example inputs). A check asks it for the original's
output metadata (`expected`), the kernel's (`actual`) and, under verify, the measured error
(`measure`); each returns None where the path cannot tell, and the check then has nothing to say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from torch import nn

    from ..decisions import Measured
    from .verification import Verify


@dataclass(frozen=True)
class CheckSettings:
    """What the shared checks are asked to do on a path.

    Attributes:
        outputs: compare the kernel's output structure, shapes, dtypes and devices with the
            original's (on the eager path only with `kernelize(..., check_outputs=True)`: it runs
            the original's Python on fake tensors).
        verify: compare numbers against the original (`verify=True`), or None.
    """

    outputs: bool = True
    verify: Verify | None = None


class Subject(Protocol):
    """A site as a check sees it (see the module docstring).

    Attributes:
        path_kind: which path asks: one of `kernel_fx.checks.PATHS`.
        layer_name: the layer name the site is marked with.
        module: the module called (None where the path could not find it).
        kernel: the kernel class planned for the site (None before one is planned).
        settings: what the shared checks are asked to do here.
        inputs: the call's tensor arguments, `float32[2, 8]`, or "" where unknown.
    """

    path_kind: str
    layer_name: str
    settings: CheckSettings
    inputs: str

    @property
    def module(self) -> nn.Module | None: ...

    @property
    def kernel(self) -> type | None: ...

    def expected(self) -> Any:
        """The original's outputs (fake or example values), or None when unknown here."""

    def actual(self) -> Any:
        """The kernel's outputs (real, fake or example values), None when unknown, or a
        `KernelFxError` saying why they do not line up with the original's structure."""

    def measure(self) -> Measured | None:
        """Under verify: the kernel's error against the original on real values, or None."""
