from kernel_fx import get_kernel, get_local_kernel, get_locked_kernel, load_kernel  # noqa: F401
