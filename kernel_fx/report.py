"""What kernel_fx did, site by site, as data; rendered as text, markdown or JSON at the edge.

>>> d = Decision(path="mlp.act", layer_name="SiluAndMul", module_class="SiluAndMul", device="cpu",
...              mode="INFERENCE", outcome=Outcome.ORIGINAL,
...              rejected=Rejected(Reason.NO_MAPPING, "no kernel mapped for layer 'SiluAndMul'"))
>>> Report([d]).summary()
'1 site: 0 kernel, 1 original (no mapping: 1)'
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import IO, Any


class Outcome(str, Enum):
    """What runs at a site."""

    KERNEL = "kernel"
    OPAQUE_KERNEL = "opaque kernel"
    ORIGINAL = "original"


class Reason(str, Enum):
    """Why a site does not run a kernel (in some or all of its conditions)."""

    NO_MAPPING = "no mapping"
    NO_DEVICE_ENTRY = "no entry for device"
    CAPABILITY_OUT_OF_RANGE = "capability out of range"
    CAPABILITY_UNAVAILABLE = "capability unavailable"
    NO_MODE_ENTRY = "no entry for mode"
    TRAINING_FALLBACK = "training fallback"
    NOT_COMPILABLE = "not torch.compile-able"
    LOAD_FAILED = "could not load"
    VALIDATION_FAILED = "validation failed"
    FILTERED = "filtered out"
    DISABLED = "disabled"
    # compile-only
    AMBIGUOUS_BINDING = "ambiguous binding"
    PARTIAL_REGION = "partial region"
    NOT_TRACEABLE = "not traceable"
    UNKNOWN_MODULE = "module not resolved"
    ENCLOSED = "inside a substituted call"


@dataclass(frozen=True)
class Rejected:
    """A typed "no": the reason and the detail that explains it."""

    reason: Reason
    detail: str

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"


@dataclass(frozen=True)
class Decision:
    """One site's outcome. `mode` names the conditions it covers, e.g. "INFERENCE" or "TRAINING"."""

    path: str
    layer_name: str
    module_class: str
    device: str
    mode: str
    outcome: Outcome
    repository: str | None = None
    variant: str | None = None
    rejected: Rejected | None = None
    unpinned: bool = False
    call_index: int | None = None
    path_kind: str = "eager"

    @property
    def uses_kernel(self) -> bool:
        return self.outcome is not Outcome.ORIGINAL

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = self.outcome.value
        data["rejected"] = None if self.rejected is None else {"reason": self.rejected.reason.value, "detail": self.rejected.detail}
        return data


@dataclass
class Report:
    """Decisions of one kernelize call or one compiled graph (plus, for graphs, their records)."""

    decisions: list[Decision] = field(default_factory=list)
    graphs: list[Any] = field(default_factory=list)

    def sites(self) -> list[tuple[str, int | None]]:
        return sorted({(d.path, d.call_index) for d in self.decisions}, key=lambda s: (s[0], s[1] or 0))

    def summary(self) -> str:
        sites = self.sites()
        using = {(d.path, d.call_index) for d in self.decisions if d.uses_kernel}
        reasons = Counter(d.rejected.reason.value for d in self.decisions if d.rejected is not None)
        n = len(sites)
        text = f"{n} site{'s' if n != 1 else ''}: {len(using)} kernel, {n - len(using)} original"
        if reasons:
            text += " (" + ", ".join(f"{r}: {c}" for r, c in sorted(reasons.items())) + ")"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "decisions": [d.as_dict() for d in self.decisions],
            "graphs": [g.as_dict() if hasattr(g, "as_dict") else g for g in self.graphs],
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), indent=kwargs.pop("indent", 2), default=str, **kwargs)

    def table(self, tablefmt: str = "simple") -> str:
        from tabulate import tabulate

        rows = [
            [
                d.path + ("" if d.call_index is None else f" #{d.call_index}"),
                d.layer_name,
                d.mode,
                d.outcome.value,
                (d.repository or "-") + (" (unpinned)" if d.unpinned else ""),
                d.variant or "-",
                "-" if d.rejected is None else str(d.rejected),
            ]
            for d in self.decisions
        ]
        headers = ["site", "layer", "mode", "runs", "repository", "variant", "reason"]
        return tabulate(rows, headers=headers, tablefmt=tablefmt)

    def to_markdown(self) -> str:
        return self.table("github") + "\n\n" + self.summary()

    def __str__(self) -> str:
        return self.table() + "\n" + self.summary()


def print_report(report: Report, file: IO[str] | None = None) -> None:
    """Print `report` to `file` (standard output, resolved at call time)."""
    (file or sys.stdout).write(f"{report}\n")
