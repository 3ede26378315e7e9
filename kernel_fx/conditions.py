"""The conditions a call of a marked layer can be in — autograd needs its backward or not,
torch.compile traces it or not — and the `Mode` each stands for. Every path plans per condition.

>>> Condition(grad=True, compiling=False).mode
<Mode.TRAINING: 2>
>>> Condition.static(Mode.INFERENCE | Mode.TORCH_COMPILE).index
2
"""

from __future__ import annotations

from dataclasses import dataclass

from .modes import Mode


@dataclass(frozen=True)
class Condition:
    """A situation a site can be called in; `fixed` is set when kernelize was given a mode."""

    grad: bool
    compiling: bool
    fixed: Mode | None = None

    @property
    def mode(self) -> Mode:
        if self.fixed is not None:
            return self.fixed
        base = Mode.TRAINING if self.grad else Mode.INFERENCE
        return base | Mode.TORCH_COMPILE if self.compiling else base

    @property
    def index(self) -> int:
        return int(self.grad) + 2 * int(self.compiling)

    @classmethod
    def static(cls, mode: Mode) -> Condition:
        return cls(Mode.TRAINING in mode, Mode.TORCH_COMPILE in mode, fixed=mode)


CONDITIONS = tuple(Condition(grad, compiling) for compiling in (False, True) for grad in (False, True))


