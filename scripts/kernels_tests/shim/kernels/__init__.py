"""kernel_fx under the name `kernels`, for running the `kernels` 0.19.1 layer tests against it.

Only names: every public name is kernel_fx's own object. The private modules the tests import
(`kernels._internals...`, `kernels._rust`) map to kernel_fx's equivalents where there is one, and
to a stand-in that raises `NotImplementedError` naming the missing internal where there is none,
so only the tests that use it fail. kernel_fx's loggers are set to INFO, as a `kernels` user's
logging configuration would have to be for kernel_fx's logger names.
"""

import logging

import kernel_fx
from kernel_fx import *  # noqa: F403
from kernel_fx import __all__ as _kernel_fx_all

__version__ = "0.19.1+kernel_fx"
__all__ = list(_kernel_fx_all)

from ._internals.install import install_kernel  # noqa: E402, F401  (an adapter over kernel_fx.hub's resolve and fetch)

__all__.append("install_kernel")
for _name in ("get_kernel_dep",):
    if hasattr(kernel_fx, _name):
        globals()[_name] = getattr(kernel_fx, _name)
        __all__.append(_name)

logging.getLogger("kernel_fx").setLevel(logging.INFO)
