"""Find the sites in a graph dynamo traced: one per call of an extensible module. Mutates nothing.

A call of a marked forward (see `boundary`) lies between its enter and exit markers, which say
exactly which graph value is which argument and output. A call of a class marked only by its
`kernel_layer_name` (e.g. by the Hugging Face `kernels` package) is found by grouping nodes on
their `nn_module_stack`, and binds only when the forward takes one tensor and returns one.

Facts this relies on (torch 2.13, CPU; see DESIGN §4):
- `nn_module_stack` maps `str(id(module))` (plus `@n` for the n-th later call *through the same
  attribute path*) to `(path, class)`. One instance reached through two paths gets the same key
  for two calls, so groups are keyed by (key, path), and marked calls by their markers.
- Parameters and buffers are placeholders whose example inputs are the real tensors.
- With dynamic shapes a float attribute is a placeholder read through `.item()`.
"""

from __future__ import annotations

import inspect
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from ..layers import layer_name_of, original_signature
from ..report import Reason, Rejected
from . import boundary

_ROOT = re.compile(r"^(L|G)\['([^']+)'\]")
_STEP = re.compile(r"\.([A-Za-z_0-9]+)|\[(\d+)\]|\['([^']+)'\]")
_NOISE = re.compile(r"\._(?:modules|parameters|buffers)\[(['\"])([^'\"\]]+)\1\]")


@dataclass(frozen=True)
class FrameInfo:
    """What the backend knows of the frame dynamo traced: its locals and globals (to find modules
    by the paths in `nn_module_stack`) and the module calls still open when the graph was cut."""

    locals: Mapping[str, Any] = field(default_factory=dict)
    globals: Mapping[str, Any] = field(default_factory=dict)
    open_keys: frozenset[str] = frozenset()

    def resolve(self, path: str) -> Any:
        """The object at a dynamo source path such as `L['self'].layers.0.mlp`, or None."""
        match = _ROOT.match(path)
        if match is None:
            return None
        scope = self.locals if match.group(1) == "L" else self.globals
        if match.group(2) not in scope:
            return None
        obj = scope[match.group(2)]
        rest = path[match.end():]
        while rest:
            step = _STEP.match(rest)
            if step is None:
                return None
            attr, index, key = step.groups()
            try:
                obj = getattr(obj, attr) if attr is not None else obj[int(index)] if index is not None else obj[key]
            except (AttributeError, IndexError, KeyError, TypeError):
                return None
            rest = rest[step.end():]
        return obj


@dataclass(frozen=True)
class Site:
    """One call of an extensible module in a graph, and how its region binds to the forward.

    `args`/`kwargs` hold graph nodes (tensor and symbolic values) or constants, in the forward's
    call order; `outputs` holds, per tensor output, the node whose uses take the kernel's output
    (None when unused); `tensors` and `scalars` are the module's own parameters/buffers and
    dynamic float attributes as graph values. `problem` is set when the site cannot be bound.
    """

    start: int
    end: int
    module: nn.Module | None
    module_class: str
    layer_name: str
    path: str
    key: tuple[str, str] | None
    marked: bool
    nodes: tuple[fx.Node, ...]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    outputs: tuple[fx.Node | None, ...] = ()
    output_spec: Any = True
    tensors: Mapping[str, fx.Node] = field(default_factory=dict)
    scalars: Mapping[str, fx.Node] = field(default_factory=dict)
    training: bool = False
    needs_grad: bool = False
    autocast: bool = False
    device: torch.device | None = None
    problem: Rejected | None = None
    call_index: int = 0
    enclosing: int | None = None


def find_sites(gm: fx.GraphModule, example_inputs: Sequence[Any], frame: FrameInfo) -> list[Site]:
    """Every call of an extensible module in `gm`, outermost first at equal start, in graph order."""
    nodes = list(gm.graph.nodes)
    graph = _GraphIndex(gm, nodes, example_inputs, frame)
    marked = _marked_sites(graph)
    taken = {s.key for s in marked if s.key is not None}
    sites = marked + _unmarked_sites(graph, taken)
    sites.sort(key=lambda s: (s.start, -s.end))
    return _with_nesting(sites)


# -- the graph, indexed once ----------------------------------------------------------------------


class _GraphIndex:
    def __init__(self, gm: fx.GraphModule, nodes: list[fx.Node], example_inputs: Sequence[Any], frame: FrameInfo) -> None:
        self.nodes = nodes
        self.frame = frame
        self.position = {n: i for i, n in enumerate(nodes)}
        self.tensor_node: dict[int, fx.Node] = {}
        placeholders = [n for n in nodes if n.op == "placeholder"]
        for node, value in zip(placeholders, example_inputs):
            if isinstance(value, torch.Tensor):
                self.tensor_node.setdefault(id(value), node)
        for node in nodes:
            if node.op == "get_attr":
                value = _get_attr(gm, str(node.target))
                if isinstance(value, torch.Tensor):
                    self.tensor_node.setdefault(id(value), node)
        self.scalars, self.scalar_placeholders = _scalar_attrs(placeholders, frame)
        self.in_autocast = _autocast_nodes(nodes)

    def module_tensors(self, module: nn.Module) -> dict[str, fx.Node]:
        found = {}
        for name, tensor in _named_tensors(module):
            node = self.tensor_node.get(id(tensor))
            if node is not None:
                found[name] = node
        return found


def _get_attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


def _named_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]


def _source_name(source: Any) -> str | None:
    name = getattr(source, "name", None)
    if callable(name):  # a method in some torch versions, a property in others
        name = name()
    return name if isinstance(name, str) else None


def _scalar_attrs(placeholders: list[fx.Node], frame: FrameInfo) -> tuple[dict[int, dict[str, fx.Node]], set[fx.Node]]:
    """Float attributes dynamo turned into inputs (dynamic shapes): {id(module): {attr: item node}}."""
    by_module: dict[int, dict[str, fx.Node]] = {}
    placeholders_used: set[fx.Node] = set()
    for node in placeholders:
        grapharg = node.meta.get("grapharg")
        source = getattr(grapharg, "source", None)
        if source is None or type(source).__name__ != "AttrSource" or not getattr(grapharg, "pass_arg_as_tensor", False):
            continue
        base = _source_name(getattr(source, "base", None))
        owner = frame.resolve(normalize_path(base)) if base else None
        if not isinstance(owner, nn.Module):
            continue
        placeholders_used.add(node)
        item = next((u for u in node.users if u.op == "call_method" and u.target == "item"), None)
        if item is not None:
            by_module.setdefault(id(owner), {})[source.member] = item
    return by_module, placeholders_used


def _autocast_nodes(nodes: list[fx.Node]) -> set[fx.Node]:
    from torch.amp import autocast_mode

    enter, leave = getattr(autocast_mode, "_enter_autocast", None), getattr(autocast_mode, "_exit_autocast", None)
    inside: set[fx.Node] = set()
    depth = 0
    for node in nodes:
        if node.op == "call_function" and node.target is enter:
            depth += 1
        elif node.op == "call_function" and node.target is leave:
            depth = max(0, depth - 1)
        elif depth:
            inside.add(node)
    return inside


def normalize_path(path: str) -> str:
    """Dynamo's source name in `nn_module_stack` spelling: `._modules['a']` -> `.a`."""
    return _NOISE.sub(r".\2", path)


def display_path(path: str) -> str:
    """`L['self'].layers.0.mlp` -> `layers.0.mlp`; `G['model'].norm` -> `model.norm`.

    The compiled module itself is `L['self']`, or `L['fn']` when dynamo starts in a wrapper.
    """
    match = _ROOT.match(path)
    if match is None:
        return path
    rest = path[match.end():]
    return rest.lstrip(".") if match.group(1) == "L" and match.group(2) in ("self", "fn") else match.group(2) + rest


def _stack(node: fx.Node) -> dict[str, tuple[str, type]]:
    return node.meta.get("nn_module_stack") or {}


def _example(node: Any) -> Any:
    return node.meta.get("example_value", node.meta.get("val")) if isinstance(node, fx.Node) else node


def _first_device(values: Sequence[Any]) -> torch.device | None:
    for value in values:
        example = _example(value)
        if isinstance(example, torch.Tensor):
            return example.device
    return None


def _requires_grad(values: Sequence[Any]) -> bool:
    return any(isinstance(e, torch.Tensor) and e.requires_grad for e in map(_example, values))


# -- marked calls ---------------------------------------------------------------------------------


def _marked_sites(graph: _GraphIndex) -> list[Site]:
    sites: list[Site] = []
    open_enters: list[fx.Node] = []
    for node in graph.nodes:
        if node.op != "call_function" or not boundary.is_marker(node.target):
            continue
        if node.target is boundary.enter:
            open_enters.append(node)
            continue
        token = node.args[0][0]
        depth = next((i for i in range(len(open_enters) - 1, -1, -1) if open_enters[i].args[0][0] == token), None)
        if depth is None:
            sites.append(_partial(graph, node, "its enter marker is in an earlier graph (graph break inside the forward)"))
            continue
        while len(open_enters) > depth + 1:
            sites.append(_partial(graph, open_enters.pop(), "it has no exit marker (graph break inside the forward)"))
        sites.append(_marked(graph, open_enters.pop(), node))
    for enter in open_enters:
        sites.append(_partial(graph, enter, "it has no exit marker (graph break inside the forward, or its output is unused or not a tensor or tuple of tensors)"))
    return sites


def _identity(graph: _GraphIndex, marker: fx.Node) -> dict[str, Any]:
    """The module a marker belongs to: the innermost call on its nn_module_stack, found by path
    in the compiled frame and checked by id. (The marker does not carry the module: dynamo
    would guard on its identity.)"""
    stack = list(_stack(marker).items())
    key, (path, cls) = stack[-1] if stack else (None, ("", None))
    module = graph.frame.resolve(path) if key is not None else None
    if not isinstance(module, nn.Module) or str(id(module)) != key.split("@")[0] or layer_name_of(module) is None:  # type: ignore[union-attr]
        module = None
    layer_name = layer_name_of(module if module is not None else cls)  # type: ignore[arg-type]
    name = type(module).__name__ if module is not None else getattr(cls, "__name__", "?")
    if marker.target is boundary.enter:
        _token, _training, _names, marked_class, layer_name = marker.args[0]
        if module is None or boundary.class_name(type(module)) != marked_class:
            # no such module, or the innermost call is another module's: this forward was called directly
            module, name = None, marked_class.rsplit(".", 1)[-1]
            if not (cls is not None and boundary.class_name(cls) == marked_class):
                key = None
    return {
        "module": module,
        "module_class": name,
        "layer_name": layer_name or "?",
        "path": display_path(path) if key is not None else f"<{name}>",
        "key": (key, path) if key is not None else None,
    }


def _unresolved(ident: dict[str, Any]) -> Rejected:
    where = f"at {ident['key'][1]}" if ident["key"] else "(its forward was called directly, not through the module)"
    return Rejected(Reason.UNKNOWN_MODULE, f"cannot find the module {where} in the compiled frame")


def _partial(graph: _GraphIndex, marker: fx.Node, why: str) -> Site:
    ident = _identity(graph, marker)
    i = graph.position[marker]
    return Site(
        start=i, end=i, marked=True, nodes=(marker,), **ident,
        problem=Rejected(Reason.PARTIAL_REGION, f"only part of the call is in this graph: {why}"),
    )


def _marked(graph: _GraphIndex, enter: fx.Node, exit_: fx.Node) -> Site:
    ident = _identity(graph, enter)
    module = ident["module"]
    start, end = graph.position[enter], graph.position[exit_]
    nodes = tuple(graph.nodes[start : end + 1])
    _token, training, names, _class, _layer = enter.args[0]
    values = iter(enter.args[1:])
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    problem = None
    for key, kind in names:
        if kind == boundary.UNSUPPORTED:
            problem = Rejected(Reason.AMBIGUOUS_BINDING, f"argument {key!r} is neither a tensor nor a constant the graph can carry")
            value = None
        elif isinstance(kind, tuple):  # a tuple of tensors
            value = tuple(next(values) for _ in range(kind[1]))
        else:
            value = next(values)
        if isinstance(key, int):
            args.append(value)
        else:
            kwargs[key] = value
    outputs: list[fx.Node | None] = [None] * len(exit_.args[1:])
    for user in exit_.users:
        if user.op == "call_function" and user.target is operator.getitem and isinstance(user.args[1], int):
            outputs[user.args[1]] = user
        else:
            problem = problem or Rejected(Reason.AMBIGUOUS_BINDING, f"the call's output is used as a whole by {user.format_node()}")
    inner_stack = set(_stack(enter))
    strays = [n for n in nodes[1:-1] if "nn_module_stack" in n.meta and not inner_stack <= set(_stack(n))]
    if strays and problem is None:
        problem = Rejected(Reason.PARTIAL_REGION, f"nodes from outside the call lie between its markers: {', '.join(n.name for n in strays[:3])}")
    if module is None:
        problem = _unresolved(ident)
    results = exit_.args[1:]
    return Site(
        start=start, end=end, marked=True, nodes=nodes, **ident,
        args=tuple(args), kwargs=kwargs, outputs=tuple(outputs), output_spec=exit_.args[0][1],
        tensors=graph.module_tensors(module) if module is not None else {},
        scalars=graph.scalars.get(id(module), {}),
        training=bool(training), needs_grad=bool(training) or _requires_grad(results),
        autocast=enter in graph.in_autocast, device=_first_device([*results, *enter.args[1:]]),
        problem=problem,
    )


# -- calls found by their nn_module_stack ---------------------------------------------------------


def _unmarked_sites(graph: _GraphIndex, taken: set[tuple[str, str]]) -> list[Site]:
    groups: dict[tuple[str, str], list[fx.Node]] = {}
    classes: dict[tuple[str, str], type] = {}
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        for key, (path, cls) in _stack(node).items():
            if (key, path) in taken or layer_name_of(cls) is None:  # type: ignore[arg-type]
                continue
            groups.setdefault((key, path), []).append(node)
            classes[(key, path)] = cls
            break  # the outermost extensible call owns the node
    return [_unmarked(graph, key, nodes, classes[key]) for key, nodes in groups.items()]


def _unmarked(graph: _GraphIndex, key: tuple[str, str], nodes: list[fx.Node], cls: type) -> Site:
    module = graph.frame.resolve(key[1])
    if not isinstance(module, nn.Module) or str(id(module)) != key[0].split("@")[0]:
        module = None
    start, end = graph.position[nodes[0]], graph.position[nodes[-1]]
    members = set(nodes)
    site = dict(
        start=start, end=end, module=module, module_class=cls.__name__,
        layer_name=layer_name_of(module if module is not None else cls) or "?",  # type: ignore[arg-type]
        path=display_path(key[1]), key=key, marked=False, nodes=tuple(nodes),
        autocast=nodes[0] in graph.in_autocast,
    )
    if module is None:
        return Site(**site, problem=Rejected(Reason.UNKNOWN_MODULE, f"cannot find the module at {key[1]} in the compiled frame"))
    tensors = graph.module_tensors(module)
    tensor_nodes = set(tensors.values())
    inputs = [a for n in nodes for a in n.all_input_nodes if a not in members]
    activations = list(dict.fromkeys(
        a for a in inputs
        if a not in tensor_nodes and a not in graph.scalar_placeholders and isinstance(_example(a), torch.Tensor)
    ))
    leaving = [n for n in nodes if isinstance(_example(n), torch.Tensor) and any(u not in members for u in n.users)]
    site.update(tensors=tensors, scalars=graph.scalars.get(id(module), {}), training=module.training,
                needs_grad=module.training or _requires_grad(leaving), device=_first_device(leaving or activations))
    problem = None
    if key[0] in graph.frame.open_keys:
        problem = Rejected(Reason.PARTIAL_REGION, "the graph was cut inside this call (nested graph break)")
    elif any(n not in members and n.op != "placeholder" for n in graph.nodes[start : end + 1]):
        problem = Rejected(Reason.PARTIAL_REGION, "the call's nodes are interleaved with other code")
    elif not _single_input(module):
        params = ", ".join(list(original_signature(module).parameters)[1:])
        problem = Rejected(Reason.AMBIGUOUS_BINDING, f"forward({params}) is not one tensor in, and the call was not marked by use_kernel_forward_from_hub")
    elif len(activations) != 1 or len(leaving) != 1:
        problem = Rejected(Reason.AMBIGUOUS_BINDING, f"the region has {len(activations)} tensor inputs and {len(leaving)} tensor outputs besides the module's own; one of each binds")
    if problem is not None:
        return Site(**site, problem=problem)
    return Site(**site, args=(activations[0],), outputs=(leaving[0],), output_spec=True)


def _single_input(module: nn.Module) -> bool:
    params = list(original_signature(module).parameters.values())[1:]
    return len(params) == 1 and params[0].kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) and params[0].default is inspect.Parameter.empty


# -- nesting and call order -----------------------------------------------------------------------


def _with_nesting(sites: list[Site]) -> list[Site]:
    from dataclasses import replace

    result: list[Site] = []
    calls: dict[int, int] = {}
    stack: list[int] = []
    for site in sites:
        while stack and result[stack[-1]].end < site.start:
            stack.pop()
        enclosing = stack[-1] if stack and site.end <= result[stack[-1]].end else None
        module_id = id(site.module) if site.module is not None else -len(result) - 1
        index = calls.get(module_id, 0)
        calls[module_id] = index + 1
        result.append(replace(site, enclosing=enclosing, call_index=index))
        stack.append(len(result) - 1)
    return result
