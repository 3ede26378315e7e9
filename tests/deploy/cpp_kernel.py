"""A kernel repository in the Hub layout whose kernel is a compiled C++ op (`torch.utils.cpp_extension.load`, CPU).

The op library registers `torch.ops.kfx_cpp_test.silu_and_mul` (CPU and Meta kernels, so export
traces it on fake tensors and AOTInductor calls it as an op) and `call_count()`, the number of
CPU calls in this process. The library is built once per source text, in a subprocess (loading it
here would register the namespace twice once the kernel's own copy loads), and cached under the
system temp dir across test sessions.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

NAMESPACE = "kfx_cpp_test"
CPP_SOURCE = r"""
#include <atomic>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/silu.h>
#include <torch/library.h>

static std::atomic<int64_t> calls{0};

// x: (..., 2 * D) -> (..., D)
at::Tensor silu_and_mul_cpu(const at::Tensor& x) {
  calls++;
  int64_t d = x.size(-1) / 2;
  return at::silu(x.narrow(-1, 0, d)).mul(x.narrow(-1, d, d));
}

at::Tensor silu_and_mul_meta(const at::Tensor& x) {
  auto sizes = x.sym_sizes().vec();
  sizes.back() = sizes.back() / 2;
  return at::empty_symint(sizes, x.options());
}

int64_t call_count() { return calls.load(); }

TORCH_LIBRARY(kfx_cpp_test, m) {
  m.def("silu_and_mul(Tensor x) -> Tensor");
  m.def("call_count() -> int", &call_count);
}
TORCH_LIBRARY_IMPL(kfx_cpp_test, CPU, m) { m.impl("silu_and_mul", silu_and_mul_cpu); }
TORCH_LIBRARY_IMPL(kfx_cpp_test, Meta, m) { m.impl("silu_and_mul", silu_and_mul_meta); }
"""

INIT = '''
import os

import torch

try:  # one registration per process: a second copy of the library may not register the namespace again
    torch.ops.kfx_cpp_test.silu_and_mul
except (AttributeError, RuntimeError):
    torch.ops.load_library(os.path.join(os.path.dirname(__file__), "_kfx_cpp_test.so"))

from . import layers
'''

LAYERS = '''
import torch
from torch import nn


class SiluAndMul(nn.Module):
    has_backward = False
    can_torch_compile = True

    def forward(self, x):
        return torch.ops.kfx_cpp_test.silu_and_mul(x)
'''

# `load` of a source file, not `load_inline`: load_inline prepends <torch/extension.h> (all of torch
# and pybind11), which triples the build time of this op library.
_BUILD = """
import sys
from torch.utils.cpp_extension import load
load("_kfx_cpp_test", sources=[sys.argv[1]], is_python_module=False, build_directory=sys.argv[2])
"""


def arch_variant() -> str:
    """This system's arch-build variant name, e.g. `torch213-cxx11-cpu-x86_64-linux`."""
    major, minor = torch.__version__.split(".")[:2]
    abi = "cxx11" if torch._C._GLIBCXX_USE_CXX11_ABI else "cxx98"
    return f"torch{major}{minor}-{abi}-cpu-x86_64-linux"


def build_library() -> Path:
    """The op library, built once per source text (about 10 s on two cores) and cached."""
    key = hashlib.sha256((CPP_SOURCE + torch.__version__).encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"kernel_fx_cpp_test_{key}"
    library = folder / "_kfx_cpp_test.so"
    if not library.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "source.cpp").write_text(CPP_SOURCE)
        subprocess.run([sys.executable, "-c", _BUILD, str(folder / "source.cpp"), str(folder)], check=True)
    return library


def make_cpp_kernel_repo(root: Path) -> Path:
    """`root/build/<arch variant>/` with the library, `__init__.py`, `layers.py` and `metadata.json`."""
    variant = root / "build" / arch_variant()
    variant.mkdir(parents=True)
    shutil.copy(build_library(), variant / "_kfx_cpp_test.so")
    (variant / "__init__.py").write_text(textwrap.dedent(INIT))
    (variant / "layers.py").write_text(textwrap.dedent(LAYERS))
    meta = {"id": NAMESPACE, "name": "kfx-cpp-test", "version": 1, "backend": {"type": "cpu"}}
    (variant / "metadata.json").write_text(json.dumps(meta))
    return root
