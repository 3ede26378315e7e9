"""A script written against the Hugging Face `kernels` package (0.19), run unchanged by
tests/test_kernels_script.py with `kernels` and, with only the import line changed, with kernel_fx.

Usage: python kernels_style.py KERNEL_REPO (a local kernel repo; LOCAL_KERNELS maps org/act to it).
Prints one `key: value` line per observation; the test compares them between the two runs.
"""

import sys
import warnings
from pathlib import Path

import torch
from kernels import (  # the one line tests/test_kernels_script.py changes
    Device,
    KernelizeFallback,
    LayerRepository,
    LocalLayerRepository,
    Mode,
    get_kernelized_layers,
    kernelize,
    replace_kernel_forward_from_hub,
    use_kernel_forward_from_hub,
    use_kernel_mapping,
)
from torch import nn


@use_kernel_forward_from_hub("SiluAndMul")
class SiluAndMul(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1] // 2
        return nn.functional.silu(x[..., :d]) * x[..., d:]


@use_kernel_forward_from_hub("RMSNorm", condition=lambda module: module.use_kernel)
class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float = 1e-6, use_kernel: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.variance_epsilon = eps
        self.use_kernel = use_kernel

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * hidden_states * torch.rsqrt(variance + self.variance_epsilon)


class Twice(nn.Module):  # a layer we do not own, marked from outside; nothing is mapped for it
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


replace_kernel_forward_from_hub(Twice, "Twice")


class MLP(nn.Module):
    def __init__(self, hidden: int = 8, use_kernel: bool = True) -> None:
        super().__init__()
        self.up = nn.Linear(hidden, 4 * hidden)
        self.act = SiluAndMul()
        self.norm = RMSNorm(2 * hidden, use_kernel=use_kernel)
        self.twice = Twice()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        return self.twice(self.norm(self.act(h)))


def main(repo: Path) -> None:
    mapping = {
        "SiluAndMul": {"cpu": LayerRepository("org/act", layer_name="SiluAndMul", version=1)},
        "RMSNorm": {Device(type="cpu"): {Mode.INFERENCE | Mode.TORCH_COMPILE: LocalLayerRepository(repo, layer_name="RMSNorm")}},
    }

    torch.manual_seed(0)
    x = torch.randn(3, 8)
    model, skipped = MLP().eval(), MLP(use_kernel=False).eval()
    skipped.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected = model(x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with use_kernel_mapping(mapping):
            model = kernelize(model, mode=Mode.INFERENCE | Mode.TORCH_COMPILE, device="cpu")
            skipped = kernelize(skipped, mode=Mode.INFERENCE | Mode.TORCH_COMPILE, device="cpu")
            try:
                kernelize(MLP(), mode=Mode.INFERENCE, device="cpu", use_fallback=False)
            except ValueError as exc:  # no mapping for Twice
                print("strict:", isinstance(exc, ValueError), "Twice" in str(exc))
            lenient = kernelize(MLP(), mode=Mode.INFERENCE, device="cpu", use_fallback=KernelizeFallback.DEFAULT)

    kernelized = get_kernelized_layers(model)
    print("layers:", sorted(kernelized.layers))
    print("funcs:", sorted(kernelized.funcs))
    print("repo types:", sorted({type(k.repo).__name__ for k in [*kernelized.layers.values(), *kernelized.funcs.values()]}))
    print("skipped by condition:", sorted(get_kernelized_layers(skipped).layers))
    print("lenient:", sorted(get_kernelized_layers(lenient).layers))

    layer = kernelized.layers["act"].repo.load()
    calls = sys.modules[layer.__module__].CALLS
    before = len(calls)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
        torch.testing.assert_close(skipped(x), expected)
    print("kernel calls per forward:", len(calls) - before)
    print("same output: True")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
