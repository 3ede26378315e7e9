"""kernel-fx-bundled, CPU variant: the demo's extensible layers rewritten in plain torch.

Loaded by path under its metadata id (`kernel_fx_bundled_cpu`), so imports stay relative.
"""

from . import layers

__all__ = ["layers"]
