from kernel_fx import FuncRepository, LocalFuncRepository, LockedFuncRepository, use_kernel_func_from_hub  # noqa: F401
