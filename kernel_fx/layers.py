"""What makes a layer extensible: the decorators model authors put on their classes and functions.

>>> import torch
>>> from torch import nn
>>> @use_kernel_forward_from_hub("SiluAndMul")
... class SiluAndMul(nn.Module):
...     def forward(self, x: torch.Tensor) -> torch.Tensor:
...         d = x.shape[-1] // 2
...         return nn.functional.silu(x[..., :d]) * x[..., d:]
>>> layer_name_of(SiluAndMul())
'SiluAndMul'
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch
from torch import nn

from . import markers
from .errors import MappingError

T = TypeVar("T")

# The attribute name the Hugging Face `kernels` package sets too: classes it marked count as marked.
LAYER_NAME_ATTR = "kernel_layer_name"
# Set on the forward wrappers below, so a class is wrapped once and a subclass is not wrapped again.
MARKED_ATTR = "__kernel_fx_marked__"
# The per-instance predicate of a marked class, under the name `kernels` uses (a staticmethod).
CONDITION_ATTR = "kernel_condition"
Condition = Callable[[nn.Module], bool]

_is_dynamo_compiling = torch.compiler.is_dynamo_compiling  # False in eager; dynamo traces it as True


def use_kernel_forward_from_hub(layer_name: str, condition: Condition | None = None) -> Callable[[T], T]:
    """Mark a layer class (or a function, see `use_kernelized_func`) as extensible under `layer_name`.

    The class behaves exactly as before; subclasses inherit the name. `kernelize` later looks
    kernels up by this name. Its forward is wrapped (see `mark_forward`) so that the hubkernels
    torch.compile backend sees each call's exact arguments. `condition(module)`, when given, is
    asked for every instance on every path; an instance for which it returns False keeps its
    original forward (reason "filtered out"). It is kept as the class's `kernel_condition`.

    >>> import torch
    >>> from torch import nn
    >>> @use_kernel_forward_from_hub("Norm", condition=lambda module: module.eps > 0)
    ... class Norm(nn.Module):
    ...     def __init__(self, eps):
    ...         super().__init__()
    ...         self.eps = eps
    ...     def forward(self, x):
    ...         return x
    >>> condition_allows(Norm(1e-6)), condition_allows(Norm(0.0))
    (True, False)
    """
    _check_layer_name(layer_name)
    if condition is not None and not callable(condition):
        raise MappingError(f"use_kernel_forward_from_hub({layer_name!r}) condition={condition!r} must be a function of the module returning a bool.")

    def decorator(target: T) -> T:
        if isinstance(target, type):
            if not issubclass(target, nn.Module):
                raise MappingError(f"use_kernel_forward_from_hub({layer_name!r}) needs an nn.Module subclass, got {target!r}.")
            setattr(target, LAYER_NAME_ATTR, layer_name)
            # Always set, as `kernels` does: a subclass marked again drops its parent's condition.
            setattr(target, CONDITION_ATTR, staticmethod(condition if condition is not None else no_condition))
            mark_forward(target)
            return target
        if callable(target):
            return KernelizableFunction(target, layer_name, condition)  # type: ignore[return-value]
        raise MappingError(f"use_kernel_forward_from_hub({layer_name!r}) decorates a class or a function, got {target!r}.")

    return decorator


def replace_kernel_forward_from_hub(cls: type[nn.Module], layer_name: str, condition: Condition | None = None) -> None:
    """Mark a layer class you do not own as extensible under `layer_name` (see `use_kernel_forward_from_hub`
    for `condition`).

    >>> from torch import nn
    >>> class Norm(nn.Module):
    ...     def forward(self, x):
    ...         return x
    >>> replace_kernel_forward_from_hub(Norm, "RMSNorm")
    >>> layer_name_of(Norm())
    'RMSNorm'
    """
    use_kernel_forward_from_hub(layer_name, condition)(cls)


def no_condition(module: nn.Module) -> bool:
    """The `kernel_condition` of a class marked without one: every instance may get a kernel."""
    return True


def condition_of(target: nn.Module | type) -> Condition | None:
    """The `kernel_condition` of a module (its class's, or its own for a function module), or None
    when there is none or it is the always-true default of kernel_fx or of the `kernels` package."""
    fn = getattr(target, CONDITION_ATTR, None)
    if fn is None or fn is no_condition or not callable(fn):
        return None
    if getattr(fn, "__qualname__", "") == "replace_kernel_forward_from_hub.<locals>.<lambda>" and \
            str(getattr(fn, "__module__", "")).startswith("kernels"):
        return None  # `kernels`' default `lambda module: True`
    return fn


def condition_allows(module: nn.Module) -> bool:
    """Whether `module`'s `kernel_condition` (if any) lets it get a kernel; asked afresh on every call."""
    fn = condition_of(module)
    return fn is None or bool(fn(module))


def mark_forward(cls: type[nn.Module]) -> bool:
    """Wrap `cls.forward` so dynamo traces each call between hubkernels boundary markers.

    In eager the wrapper just calls the forward (one extra frame and a constant check per call).
    Only `cls` changes: an inherited forward is wrapped in a new function set on `cls`, a
    forward that is already wrapped (a subclass of a marked class) is left alone, and classes
    defined by torch itself are not wrapped (their calls still bind from the graph when they
    take one tensor).

    >>> from torch import nn
    >>> class Norm(nn.Module):
    ...     def forward(self, x, eps=1e-6):
    ...         return x
    >>> original = Norm.forward
    >>> mark_forward(Norm)
    True
    >>> Norm.forward is original, Norm.forward.__wrapped__ is original
    (False, True)
    >>> import inspect; str(inspect.signature(Norm.forward))
    '(self, x, eps=1e-06)'
    """
    forward = cls.forward
    if getattr(forward, MARKED_ATTR, False) or forward is nn.Module.forward:
        return False
    if cls.__module__.split(".")[0] == "torch":
        return False

    @functools.wraps(forward)
    def marked_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if _is_dynamo_compiling():
            return markers.marked_call(forward, marked_forward, self, args, kwargs)
        return forward(self, *args, **kwargs)

    setattr(marked_forward, MARKED_ATTR, True)
    cls.forward = marked_forward  # type: ignore[method-assign]
    markers.MARKED_CLASSES[markers.class_name(cls)] = cls
    return True


class KernelizableFunction:
    """A function marked extensible. Calling it always runs the original function.

    A host module class decorated with `use_kernelized_func(fn)` gets a private `FunctionLayer`
    per instance, so kernelizing one model never changes the function for another model or for
    bare calls (the Hugging Face anchor shares one module between all of them).
    """

    def __init__(self, fn: Callable[..., Any], layer_name: str, condition: Condition | None = None) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.kernel_layer_name = layer_name
        self.kernel_condition = condition

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"KernelizableFunction({self.fn.__qualname__}, layer_name={self.kernel_layer_name!r})"


class FunctionLayer(nn.Module):
    """One host module's own handle on an extensible function; `kernelize` swaps its forward."""

    def __init__(self, function: KernelizableFunction) -> None:
        super().__init__()
        self.function = function
        self.kernel_layer_name = function.kernel_layer_name
        if getattr(function, CONDITION_ATTR, None) is not None:
            self.kernel_condition = function.kernel_condition  # asked with this module, as for a class

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.function.fn(*args, **kwargs)

    def original_signature(self) -> inspect.Signature:
        """The signature a kernel's forward must match: the function's, with `self` in front."""
        sig = inspect.signature(self.function.fn)
        self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        return sig.replace(parameters=[self_param, *sig.parameters.values()])

    def extra_repr(self) -> str:
        return f"{self.function.fn.__qualname__}, layer_name={self.kernel_layer_name!r}"


mark_forward(FunctionLayer)


def use_kernelized_func(*functions: KernelizableFunction) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Give every instance of the decorated module class its own kernelizable copy of `functions`.

    Each function becomes a submodule named after it, so the host calls `self.<name>(...)`:

    >>> import torch
    >>> from torch import nn
    >>> @use_kernel_forward_from_hub("Twice")
    ... def twice(x):
    ...     return 2 * x
    >>> @use_kernelized_func(twice)
    ... class Host(nn.Module):
    ...     def forward(self, x):
    ...         return self.twice(x)
    >>> Host()(torch.ones(2)).tolist()
    [2.0, 2.0]
    """
    for fn in functions:
        if not isinstance(fn, KernelizableFunction):
            name = getattr(fn, "__name__", repr(fn))
            raise MappingError(  # its first sentence is `kernels`' wording, which its users match on
                f"Function `{name}` is not decorated with @use_kernel_forward_from_hub and cannot be used with "
                f"@use_kernelized_func: use_kernelized_func got {fn!r}; decorate the function with "
                "@use_kernel_forward_from_hub(name) first."
            )

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        for fn in functions:
            if hasattr(cls, fn.__name__):  # a class attribute would shadow the submodule
                raise MappingError(
                    f"use_kernelized_func cannot attach {fn.__name__!r} to {cls.__name__}: the class already has "
                    "an attribute of that name; rename the function."
                )
        original_init = cls.__init__

        @functools.wraps(original_init)
        def __init__(self: nn.Module, *args: Any, **kwargs: Any) -> None:
            original_init(self, *args, **kwargs)
            for fn in functions:
                setattr(self, fn.__name__, FunctionLayer(fn))

        cls.__init__ = __init__  # type: ignore[method-assign]
        return cls

    return decorator


def use_kernel_func_from_hub(func_name: str) -> Callable[[Callable[..., Any]], FunctionLayer]:
    """Deprecated (as in `kernels`): turn a function into an extensible module instance under `func_name`.

    The result is one module shared by every model that assigns it (`self.fn = my_func` registers it
    as a submodule), so kernelizing one model changes it for all of them; prefer
    `use_kernel_forward_from_hub` with `use_kernelized_func`, which gives each host its own copy.

    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore", DeprecationWarning)
    ...     @use_kernel_func_from_hub("twice")
    ...     def twice(x):
    ...         return 2 * x
    >>> twice(21), type(twice).kernel_layer_name, isinstance(twice, nn.Module)
    (42, 'twice', True)
    """
    warnings.warn(
        "use_kernel_func_from_hub is deprecated (as in `kernels`); use @use_kernel_forward_from_hub on the function "
        "and @use_kernelized_func on the module that calls it.",
        DeprecationWarning,
        stacklevel=2,
    )
    _check_layer_name(func_name)

    def decorator(fn: Callable[..., Any]) -> FunctionLayer:
        if isinstance(fn, type) or not callable(fn):
            raise MappingError(f"use_kernel_func_from_hub({func_name!r}) decorates a function, got {fn!r}.")
        # A class per function carrying the name, as `kernels`' `Func` classes do: code checks
        # `type(fn).kernel_layer_name` and `isinstance(fn, nn.Module)`.
        module_class = type(f"FunctionLayer_{fn.__name__}", (FunctionLayer,), {LAYER_NAME_ATTR: func_name, "__module__": __name__})
        return module_class(KernelizableFunction(fn, func_name))

    return decorator


# Where the Hugging Face `kernels` package keeps a host module's own copies of the functions it
# marked with its `use_kernelized_func` (a plain dict in the instance, not registered submodules).
HUB_FUNCS_ATTR = "_kernel_funcs"


def extensible_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every extensible site of `model` as (path, module): marked submodules, and the per-instance
    function modules of `kernels`' `use_kernelized_func` (`<host path>.<name>`), which
    `named_modules()` does not list.

    >>> from torch import nn
    >>> @use_kernel_forward_from_hub("Twice")
    ... class Twice(nn.Module):
    ...     def forward(self, x):
    ...         return 2 * x
    >>> [path for path, _ in extensible_modules(nn.Sequential(nn.Linear(2, 2), Twice()))]
    ['1']
    """
    yield from extensible_in(model.named_modules())


def extensible_in(named: Iterable[tuple[str, nn.Module]]) -> Iterator[tuple[str, nn.Module]]:
    """`extensible_modules` of modules already listed as (path, module): one walk serves several uses."""
    for path, module in named:
        if layer_name_of(module) is not None:
            yield path, module
        for name, function in vars(module).get(HUB_FUNCS_ATTR, {}).items():
            if isinstance(function, nn.Module) and layer_name_of(function) is not None:
                yield (f"{path}.{name}" if path else name), function


def hub_function_hosts(model: nn.Module, named: Iterable[tuple[str, nn.Module]] | None = None) -> dict[int, nn.Module]:
    """{id(function module): its host module} for `kernels`' per-instance function modules."""
    modules = (m for _p, m in named) if named is not None else model.modules()
    return {
        id(function): module
        for module in modules
        if HUB_FUNCS_ATTR in vars(module)
        for function in vars(module)[HUB_FUNCS_ATTR].values()
    }


def mark_hub_classes() -> int:
    """Give every loaded class marked only by its `kernel_layer_name` (by the `kernels` package or
    transformers) the same call-boundary wrapper kernel_fx's decorator puts on its forward, so the
    compiled pass binds its calls exactly. Eager behaviour is unchanged; classes loaded later
    are marked on the next call. Returns how many classes were marked now."""
    marked = 0
    for cls in module_classes():
        if isinstance(vars(cls).get(LAYER_NAME_ATTR), str) and not getattr(cls.forward, MARKED_ATTR, False):
            marked += mark_forward(cls)
    return marked


def module_classes() -> Iterator[type[nn.Module]]:
    """Every loaded `nn.Module` subclass, each once (a class with several bases is reached twice)."""
    seen: set[type] = set()
    pending = list(nn.Module.__subclasses__())
    while pending:
        cls = pending.pop()
        if cls not in seen:
            seen.add(cls)
            pending.extend(cls.__subclasses__())
            yield cls


def layer_name_of(module: nn.Module) -> str | None:
    """The extensible layer name of `module`, or None when it is not extensible."""
    name = getattr(module, LAYER_NAME_ATTR, None)
    return name if isinstance(name, str) else None


def forward_override(cls: type) -> tuple[type, type] | None:
    """`(subclass, marked class)` when `cls` inherits its layer name from a marked class but a
    class below that one defines its own `forward`; None when the forward is the marked one.

    Such a subclass computes something else under the inherited name, so no path gives it the
    marked layer's kernel unless it is marked itself.

    >>> from torch import nn
    >>> @use_kernel_forward_from_hub("Double")
    ... class Double(nn.Module):
    ...     def forward(self, x):
    ...         return 2 * x
    >>> class Triple(Double):
    ...     def forward(self, x):
    ...         return 3 * x
    >>> class Quiet(Double):
    ...     pass
    >>> [c.__name__ for c in forward_override(Triple)], forward_override(Quiet), forward_override(Double)
    (['Triple', 'Double'], None, None)
    """
    mro = getattr(cls, "__mro__", ())
    named = next((c for c in mro if LAYER_NAME_ATTR in vars(c)), None)
    own = next((c for c in mro if "forward" in vars(c)), None)
    if named is None or own is None or own is named or not issubclass(own, named):
        return None
    return own, named


def signature_owner(module: nn.Module) -> object:
    """What fixes the signature a kernel must match at `module`: the function of a function module
    (every function module shares `FunctionLayer.forward`, so the forward cannot tell them apart),
    else the module's class. Caches of validation verdicts are keyed by it."""
    if isinstance(module, FunctionLayer):
        return module.function.fn
    return type(module)


def original_signature(module: nn.Module) -> inspect.Signature:
    """The signature (with `self`) of the forward a kernel replaces on `module`."""
    if isinstance(module, FunctionLayer):
        return module.original_signature()
    return inspect.signature(type(module).forward)


def _check_layer_name(layer_name: object) -> None:
    if not isinstance(layer_name, str) or not layer_name:
        raise MappingError(f"Layer name {layer_name!r} must be a non-empty string such as 'RMSNorm'.")
