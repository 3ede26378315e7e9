"""`kernels._internals.layer.layer`: the names the tests import. kernel_fx keeps its mapping in a
ContextVar of `kernel_fx.mapping` with its own entry types and loads through its planner, so the
mapping internals and the monkeypatch targets have no equivalent here."""

from kernel_fx import (  # noqa: F401
    KernelizeFallback,
    LayerRepository,
    LocalLayerRepository,
    LockedLayerRepository,
    replace_kernel_forward_from_hub,
    use_kernel_forward_from_hub,
    use_kernelized_func,
)


class _NoEquivalent:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        raise NotImplementedError(f"kernel_fx has no equivalent of kernels' internal {self._name}")

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(f"kernel_fx has no equivalent of kernels' internal {self._name}")


_KERNEL_MAPPING = _NoEquivalent("_KERNEL_MAPPING (mapping entries with repos_for_device)")


def get_kernel(*args, **kwargs):
    raise NotImplementedError("kernel_fx's repositories do not load through kernels._internals.layer.layer.get_kernel")


def _get_layer_memoize(*args, **kwargs):
    raise NotImplementedError("kernel_fx's planner does not load through kernels' _get_layer_memoize")


def _validate_layer(*, check_cls, cls, repo):
    """kernel_fx's check of kernel layer `cls` against the class it replaces (`validation.kernel_problem`),
    raised as the `TypeError` `kernels` raises; the message is kernel_fx's, naming `repo`."""
    import inspect

    from kernel_fx.validation import kernel_problem

    problem = kernel_problem(cls, check_cls.forward, lambda: inspect.signature(check_cls.forward), owner=check_cls)
    if problem is not None:
        raise TypeError(f"Kernel layer `{cls.__name__}` from {repo} does not fit `{check_cls.__name__}`: {problem}")
