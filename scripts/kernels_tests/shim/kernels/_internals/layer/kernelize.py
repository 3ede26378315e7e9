from kernel_fx import kernelize, register_kernel_mapping, use_kernel_mapping  # noqa: F401
