"""torch 2.13 (CPU), no kernel_fx: `aot_eager` gives a shared module's parameter a wrong gradient
when a module between its two calls writes a buffer in place and reads it back through a view
(`backend="eager"` agrees with eager). The 6 "upstream" cases of benchmarks/results/fuzz-long.json
are this. Run: python benchmarks/results/upstream-aot-eager-buffer-grad.py
(prints "a.w grad diff 0.088 t.w 0.0"; with backend="eager" both are 0.0)."""

import copy

import torch
from torch import nn


class Tally(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.5, 1.5, 8))
        self.register_buffer("tally", torch.zeros(()))

    def forward(self, x):
        self.tally.add_(1)
        return self.tally.expand_as(x) + x * self.w


class Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.5, 1.5, 8))

    def forward(self, x):
        return torch.tanh(x * self.w)


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = Scale()
        self.t = Tally()

    def forward(self, x):
        return self.a(self.t(self.a(x)))  # `a` called twice, the buffer written in between


torch.manual_seed(0)
compiled, reference = Model(), None
reference = copy.deepcopy(compiled)
x = torch.randn(4, 8)
for model in (reference, torch.compile(compiled, backend="aot_eager")):
    model(x).square().mean().backward()
print("a.w grad diff", (reference.a.w.grad - compiled.a.w.grad).abs().max().item(),
      "t.w", (reference.t.w.grad - compiled.t.w.grad).abs().max().item())
