"""The `kernels` 0.19.1 tests kernel_fx fails on purpose or for a reason stated in the README's
differences table: {test id: the row}. Each entry was checked against the failure's message."""

NAMES = "the signature check compares parameter names: the kernel's forward takes x, the layer's input"
WRONG_OUTPUT = "a kernel whose output shape differs from the original's keeps the original (wrong output)"
FUNC_NOT_MODULE = "a function decorated with use_kernel_forward_from_hub is not an nn.Module"
FALLBACK = "use_fallback=True: every fallback, load failures included"
UNPINNED = "LayerRepository without revision / version"
FUNCS = "use_kernelized_func: one FunctionLayer submodule per host, no `_kernel_funcs` dict"
INTERNALS = "kernels' private internals (_KERNEL_MAPPING, _get_layer_memoize, layer.get_kernel, _kernel_repo, _validate_layer)"
DEPRECATION = "deprecated APIs: a DeprecationWarning, not a log warning"
LOCK_TYPES = "kernels' lock types (_rust.KernelDependency, KernelLocks) on LockedLayerRepository"

DOCUMENTED: dict[str, str] = {
    "test_layer.py::test_layer_versions": FALLBACK,
    "test_layer.py::test_layer_repository_requires_version_or_revision": UNPINNED,
    "test_func.py::test_deprecated_func_repository_requires_version_or_revision": UNPINNED,
    **{f"test_func.py::{t}": FUNCS for t in (
        "test_kernel_func_is_per_instance", "test_kernel_func_copy_is_independent[copy]",
        "test_kernel_func_copy_is_independent[deepcopy]", "test_kernel_func_serialization_is_independent[deepcopy]",
        "test_kernel_func_serialization_is_independent[<lambda>]", "test_kernel_func_fallback_leaves_no_forward",
        "test_kernel_func_nested_dispatch[False]", "test_kernel_func_nested_dispatch[True]",
        "test_kernel_func_nested_compile_context[1-7.0]", "test_kernel_func_nested_compile_context[2-19.0]",
        "test_kernel_func_compile_reuses_forward_across_instances", "test_kernel_func_compile_forward_switch")},
    "test_layer.py::test_get_kernelized_layers_func": FUNCS,
    **{f"test_layer.py::{t}": INTERNALS for t in (
        "test_capability_is_not_cached", "test_get_kernelized_layers", "test_get_kernelized_layers_cleared_on_rekernelize",
        "test_get_kernelized_layers_locked_repo_serialization", "test_kernelize_device_index",
        "test_kernelize_torch_device_rocm[False]", "test_kernelize_torch_device_rocm[True]",
        "test_layer_repository_forwards_user_agent[None]", "test_layer_repository_forwards_user_agent[transformers/5.0.0]",
        "test_layer_repository_forwards_user_agent[user_agent2]", "test_validate_kernel_layer")},
    "test_layer_cpu.py::test_mapping_contexts": INTERNALS,
    "test_func.py::test_deprecated_kernel_func": DEPRECATION,
    "test_func.py::test_decorator": FUNC_NOT_MODULE,
    "test_layer.py::test_locked_repository_restores_rust_objects": LOCK_TYPES,
    **{f"test_layer_cpu.py::{t}": NAMES for t in (
        "test_get_kernelized_layers_hub", "test_torch_compile_layer_without_fallback[cpu-SiluAndMulWithKernel]",
        "test_torch_compile_layer_without_fallback[cpu-SiluAndMulNoCompileKernel]")},
    **{f"test_layer_cpu.py::{t}[{c}]": NAMES for t in ("test_hub_forward", "test_hub_func")
       for c in ("SiluAndMulWithKernel", "SiluAndMulStringDevice")},
    "test_func.py::test_deprecated_func_repository": WRONG_OUTPUT,
    "test_func_cpu.py::test_kernel_func_with_layer": WRONG_OUTPUT,
}
