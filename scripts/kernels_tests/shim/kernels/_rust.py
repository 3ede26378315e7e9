"""`kernels._rust`: the lock-file types, mapped to kernel_fx's where it has them."""

from kernel_fx.hub import kernels_lock as _lock


def _missing(name):
    class Missing:
        def __init__(self, *args, **kwargs):
            raise NotImplementedError(f"kernel_fx has no equivalent of kernels._rust.{name}")

    Missing.__name__ = name
    return Missing


for _name in ("KernelDependency", "KernelLock", "KernelLocks", "KernelVersion", "Metadata"):
    globals()[_name] = getattr(_lock, _name, None) or _missing(_name)
