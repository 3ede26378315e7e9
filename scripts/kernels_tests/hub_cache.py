"""An offline huggingface_hub cache holding the kernel repos the `kernels` 0.19.1 layer tests load.

The Hub repos those tests name (`kernels-test/versions`, `kernels-test/silu-and-mul`, ...) are
rebuilt here as pure-Python `torch-universal` builds, laid out as huggingface_hub lays out its
cache (`kernels--<org>--<name>/refs/<ref>` holding a commit, `snapshots/<commit>/build/...`), so
both `kernels` and kernel_fx load them with `HF_HUB_OFFLINE=1`. They are reconstructions from
what the tests assert (the real repos hold compiled builds we cannot fetch here): the commits the
tests' lock files pin are kept, so those locks resolve; every other commit is made up.

>>> import tempfile
>>> root = build_cache(Path(tempfile.mkdtemp()))
>>> (root / "kernels--kernels-test--versions" / "refs" / "v2").read_text() == VERSIONS_V2
True
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# Commits pinned by the lock files in the sdist's tests/kernel_locking and tests/layer_locking.
VERSIONS_V2 = "f609e51b856b3d874b0ae8445913e200f02c1735"
RELU_V1 = "4f593f99ef250e10e9377b5c10109351b418f318"
KERNEL_DEPS_V1 = "b1c7a501401316a27653d46107b98259ee79d888"
EINOPS_V1 = "94986c119039ea0cb65592c210c57255de1089eb"

VARIANT = "torch-universal"

SILU_AND_MUL = '''
import torch
import torch.nn.functional as F
from torch import nn


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


class SiluAndMul(nn.Module):
    can_torch_compile = {compile}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return silu_and_mul(x)
'''

LINEAR = '''
import torch
import torch.nn.functional as F
from torch import nn


class LinearBackward(nn.Module):
    has_backward = True
    can_torch_compile = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.weight, self.bias)


class LinearNoBackward(nn.Module):
    has_backward = False
    can_torch_compile = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.weight, self.bias)


class LinearImplicitBackward(nn.Module):
    can_torch_compile = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.weight, self.bias)
'''

VERSION = '''
from torch import nn


def version() -> int:
    return {n}


class Version(nn.Module):
    def forward(self) -> int:
        return {n}
'''

RELU = '''
import torch
from torch import nn


def relu(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x)


class ReLU(nn.Module):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return relu(input)
'''

EINOPS = "def rearrange(x, pattern):\n    return x\n"

# A kernel that takes another kernel as a dependency (`kernel-depends` in its metadata) and reaches
# it, while it is being loaded, through `kernels.get_kernel_dep`.
KERNEL_DEPS = '''
from kernels import get_kernel_dep

einops = get_kernel_dep("kernels-community/einops")


def uses_einops(x):
    return einops.rearrange(x, "a b -> a b")
'''


def _commit(repo_id: str, ref: str) -> str:
    return hashlib.sha1(f"{repo_id}@{ref}".encode()).hexdigest()


def _variant(name: str, commit: str, files: dict[str, str], depends: list[dict] | None = None) -> dict[str, str]:
    metadata = {"id": f"_{name.replace('-', '_')}_{commit[:10]}", "name": name, "version": 1, "license": "apache-2.0",
                "python-depends": [], "backend": {"type": "universal"}}
    if depends:
        metadata["kernel-depends"] = depends
    return {**files, "metadata.json": json.dumps(metadata)}


def _package(layers: str = "", extra: str = "") -> dict[str, str]:
    init = "from . import layers\nfrom .layers import *  # noqa: F403\n" if layers else ""
    files = {"__init__.py": init + extra}
    if layers:
        files["layers.py"] = layers
    return files


def repos() -> dict[str, dict[str, tuple[str, dict[str, str]]]]:
    """{repo_id: {ref: (commit, files of the variant)}}; refs sharing a commit share its files."""
    v1 = _commit("kernels-test/versions", "v1")
    silu = _package(SILU_AND_MUL.format(compile=True))
    return {
        "kernels-test/versions": {
            "v1": (v1, _package(VERSION.format(n=1))),
            "v2": (VERSIONS_V2, _package(VERSION.format(n=2))),
            "main": (VERSIONS_V2, _package(VERSION.format(n=2))),
        },
        "kernels-test/silu-and-mul": {ref: (_commit("kernels-test/silu-and-mul", "main"), silu) for ref in ("main", "v1")},
        "kernels-test/flattened-build": {ref: (_commit("kernels-test/flattened-build", "main"), silu) for ref in ("main", "v1")},
        "kernels-test/op-without-fake-test": {
            "main": (_commit("kernels-test/op-without-fake-test", "main"), _package(SILU_AND_MUL.format(compile=False))),
        },
        "kernels-test/backward-marker-test": {"main": (_commit("kernels-test/backward-marker-test", "main"), _package(LINEAR))},
        "kernels-community/relu": {"v1": (RELU_V1, _package(RELU)), "main": (RELU_V1, _package(RELU))},
        "kernels-community/einops": {"v1": (EINOPS_V1, {"__init__.py": EINOPS}), "main": (EINOPS_V1, {"__init__.py": EINOPS})},
        "kernels-test/kernel-deps": {
            ref: (KERNEL_DEPS_V1, {"__init__.py": KERNEL_DEPS, "_depends": "kernels-community/einops"}) for ref in ("v1", "main")
        },
    }


def build_cache(root: Path) -> Path:
    """Write every repo of `repos()` under `root` (a huggingface_hub cache directory); return `root`."""
    for repo_id, refs in repos().items():
        folder = root / f"kernels--{repo_id.replace('/', '--')}"
        for ref, (commit, files) in refs.items():
            (folder / "refs").mkdir(parents=True, exist_ok=True)
            (folder / "refs" / ref).write_text(commit)
            files = dict(files)
            depends = [{"repo-id": files.pop("_depends"), "version": 1}] if "_depends" in files else None
            variant = folder / "snapshots" / commit / "build" / VARIANT
            variant.mkdir(parents=True, exist_ok=True)
            for name, text in _variant(repo_id.split("/")[1], commit, files, depends).items():
                (variant / name).write_text(text)
    return root
