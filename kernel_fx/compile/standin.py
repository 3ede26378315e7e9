"""How a kernel's forward is called from a graph: a stand-in `self` and the call's layout.

A kernel's forward reads `self.weight`, `self.variance_epsilon`, ... In a graph the weight is a
graph value, not the module's real parameter (binding the real module fails under AOTAutograd:
"convert all Tensors to FakeTensors"). The stand-in answers with the graph value for parameters,
buffers and dynamic float attributes, and with a snapshot of the module for everything else, so a
compiled graph holds no reference to the model.

>>> import torch
>>> from torch import nn
>>> norm = nn.LayerNorm(4)
>>> spec = CallSpec(ModuleTemplate.of(norm), args=(InputRef(0),), kwargs=(), attrs=(("weight", 1), ("bias", 2)), output_spec=True)
>>> this, args, kwargs = spec.bind((torch.ones(4), torch.full((4,), 2.0), torch.zeros(4)))
>>> this.weight.tolist(), this.eps, args[0].shape
([2.0, 2.0, 2.0, 2.0], 1e-05, torch.Size([4]))
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from types import FunctionType, MethodType
from typing import Any

import torch
from torch import nn

from ..errors import KernelFxError

_NOT_ATTRS = frozenset({"_parameters", "_buffers", "_modules"})


class MissingGraphValue(KernelFxError):
    """A kernel read a parameter or buffer that is not a value of the graph."""


@dataclass(frozen=True)
class ModuleTemplate:
    """A snapshot of a module for stand-ins: class, plain attributes, tensor names, children."""

    cls: type
    attrs: dict[str, Any]
    tensor_names: frozenset[str]
    live: dict[str, torch.Tensor]
    children: dict[str, ModuleTemplate]

    @classmethod
    def of(cls, module: nn.Module, keep_live: frozenset[str] = frozenset(), prefix: str = "") -> ModuleTemplate:
        """`keep_live`: dotted names of tensors (not in the graph) an opaque call reads from the module."""
        tensors = {**module._parameters, **module._buffers}
        names = frozenset(n for n, t in tensors.items() if t is not None)
        live = {n: getattr(module, n) for n in names if prefix + n in keep_live}
        attrs = {k: v for k, v in vars(module).items() if k not in _NOT_ATTRS}
        attrs.update({n: None for n, t in tensors.items() if t is None})  # e.g. Linear(bias=False).bias
        children = {n: cls.of(m, keep_live, f"{prefix}{n}.") for n, m in module._modules.items() if m is not None}
        return cls(type(module), attrs, names, live, children)


    def state_tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Real tensors a stand-in may hand out that are not graph values: live parameters and
        buffers, and plain tensor attributes (`self.table = torch.ones(4)`), by dotted name."""
        found = {prefix + k: v for k, v in self.live.items()}
        found.update((prefix + k, v) for k, v in self.attrs.items() if isinstance(v, torch.Tensor))
        for name, child in self.children.items():
            found.update(child.state_tensors(f"{prefix}{name}."))
        return found

    def with_tensors(self, convert: Callable[[torch.Tensor], torch.Tensor]) -> ModuleTemplate:
        """This template with every tensor of `state_tensors` replaced by `convert(tensor)`: the
        fake implementation of an opaque op must see fake tensors only (issue 14, finding 4)."""
        return ModuleTemplate(
            self.cls,
            {k: convert(v) if isinstance(v, torch.Tensor) else v for k, v in self.attrs.items()},
            self.tensor_names,
            {k: convert(v) for k, v in self.live.items()},
            {k: c.with_tensors(convert) for k, c in self.children.items()},
        )


class StandIn:
    """`self` for a kernel's forward: graph values for tensors, the template for the rest."""

    __slots__ = ("_template", "_values", "_strict", "_own")

    def __init__(self, template: ModuleTemplate, values: dict[str, Any], strict: bool = True) -> None:
        object.__setattr__(self, "_template", template)
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "_strict", strict)
        object.__setattr__(self, "_own", {})

    def __getattr__(self, name: str) -> Any:
        template: ModuleTemplate = object.__getattribute__(self, "_template")
        values: dict[str, Any] = object.__getattribute__(self, "_values")
        own: dict[str, Any] = object.__getattribute__(self, "_own")
        if name in own:
            return own[name]
        if name in values:
            return values[name]
        child = template.children.get(name)
        if child is not None:
            prefix = name + "."
            sub = {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}
            return StandIn(child, sub, object.__getattribute__(self, "_strict"))
        if name in template.tensor_names:
            if name in template.live and not object.__getattribute__(self, "_strict"):
                return template.live[name]
            raise MissingGraphValue(
                f"the kernel reads {template.cls.__name__}.{name}, which the original forward does not use, "
                "so it is not a value of the graph"
            )
        if name in template.attrs:
            return template.attrs[name]
        attr = inspect.getattr_static(template.cls, name)  # AttributeError when there is none
        if isinstance(attr, staticmethod):
            return attr.__func__
        if isinstance(attr, classmethod):
            return MethodType(attr.__func__, template.cls)
        if isinstance(attr, FunctionType):
            return MethodType(attr, self)
        if isinstance(attr, property) and attr.fget is not None:
            return attr.fget(self)
        return getattr(template.cls, name)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__getattribute__(self, "_own")[name] = value  # never reaches the real module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<stand-in for {object.__getattribute__(self, '_template').cls.__name__}>"


def standin_tensors(this: StandIn) -> dict[str, torch.Tensor]:
    """The graph values a stand-in answers for the module's tensors, by dotted name."""
    values: dict[str, Any] = object.__getattribute__(this, "_values")
    return {name: v for name, v in values.items() if isinstance(v, torch.Tensor)}


def named_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and buffer of `module` (submodules' dotted), duplicates included."""
    return [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]


@dataclass(frozen=True)
class InputRef:
    """Position of a value in a call's flat inputs."""

    index: int


def _fill(value: Any, flat: tuple) -> Any:
    if isinstance(value, tuple):
        return tuple(_fill(v, flat) for v in value)
    return flat[value.index] if isinstance(value, InputRef) else value


@dataclass(frozen=True)
class CallSpec:
    """A kernel call as flat inputs: `args`/`kwargs` hold `InputRef`s or constants; `attrs` maps
    stand-in attribute names (dotted for submodules) to slots; `output_spec` is True for one
    tensor, or a tuple of booleans (tensor or None) for a tuple output."""

    template: ModuleTemplate
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...]
    attrs: tuple[tuple[str, int], ...]
    output_spec: Any

    def bind(self, flat: tuple, strict: bool = True, template: ModuleTemplate | None = None) -> tuple[StandIn, list[Any], dict[str, Any]]:
        """`self`, args and kwargs for one call on `flat`; `template` replaces the spec's own
        (one with fake state tensors, for a run on fake values)."""
        values = {name: flat[i] for name, i in self.attrs}
        args = [_fill(a, flat) for a in self.args]
        kwargs = {k: _fill(v, flat) for k, v in self.kwargs}
        return StandIn(template or self.template, values, strict), args, kwargs

    def flatten(self, out: Any) -> tuple[torch.Tensor, ...]:
        """The tensors of a forward's output, in order; raise when its structure differs."""
        if self.output_spec is True:
            if not isinstance(out, torch.Tensor):
                raise KernelFxError(f"the kernel returned {type(out).__name__}; the original forward returns one tensor")
            return (out,)
        spec = tuple(self.output_spec)
        if not isinstance(out, (tuple, list)) or len(out) != len(spec):
            raise KernelFxError(f"the kernel returned {type(out).__name__}; the original forward returns a tuple of {len(spec)}")
        if any(isinstance(o, torch.Tensor) != is_tensor for o, is_tensor in zip(out, spec)):
            raise KernelFxError("the kernel's outputs are not tensors where the original forward's are")
        return tuple(o for o in out if isinstance(o, torch.Tensor))


class KernelCall:
    """A graph node's target that runs a kernel's forward; AOTAutograd traces through it.

    Used where the kernel's own autograd must survive (custom `autograd.Function`s) or under
    autocast; elsewhere the kernel is traced into the graph instead.
    """

    def __init__(self, forward: Callable[..., Any], spec: CallSpec, name: str) -> None:
        self.forward = forward
        self.spec = spec
        self.__name__ = self.__qualname__ = name
        self.__module__ = __name__

    def __call__(self, *flat: Any) -> tuple[torch.Tensor, ...]:
        this, args, kwargs = self.spec.bind(flat)
        return self.spec.flatten(self.forward(this, *args, **kwargs))

    def __repr__(self) -> str:
        return f"<kernel call {self.__name__}>"
