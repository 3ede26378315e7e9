"""kernel-fx-bundled, CUDA variant: Triton kernels (forward and backward) as torch custom ops.

Loaded by path under its metadata id (`kernel_fx_bundled_cuda`), which is also the `torch.ops`
namespace of its ops; imports stay relative. Importing it needs Triton.
"""

from . import layers

__all__ = ["layers"]
