"""Find the sites in a graph dynamo traced: one per call of an extensible module. Mutates nothing.

A call of a marked forward (see `kernel_fx.markers`) lies between its enter and exit markers, which say
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch
from torch import fx, nn

from .. import markers
from ..decisions import Reason, Rejected
from ..layers import layer_name_of, original_signature
from .frame import FrameInfo
from .standin import named_tensors


class SiteIdentity(NamedTuple):
    """Which call a site is: the module (None when it cannot be found), its class and layer name,
    its path for the report, and its `nn_module_stack` key `(key, source path)`."""

    module: nn.Module | None
    module_class: str
    layer_name: str
    path: str
    key: tuple[str, str] | None
    host: nn.Module | None = None  # the module calling a global function module (`kernels`' marked functions)


@dataclass(frozen=True)
class Binding:
    """How a call's region binds to the forward: `args`/`kwargs` hold graph nodes (tensor and
    symbolic values) or constants in the forward's call order; `outputs` holds, per tensor output,
    the node whose uses take the kernel's output (None when unused); `output_spec` is True for one
    tensor or a tuple of booleans (tensor or None); `tensors` and `scalars` are the module's own
    parameters/buffers and dynamic float attributes as graph values."""

    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    outputs: tuple[fx.Node | None, ...] = ()
    output_spec: Any = True
    tensors: Mapping[str, fx.Node] = field(default_factory=dict)
    scalars: Mapping[str, fx.Node] = field(default_factory=dict)

    def read_nodes(self) -> list[fx.Node]:
        """The graph values a substitution reads: arguments, then the module's own tensors and scalars."""
        values = [*self.args, *self.kwargs.values(), *self.tensors.values(), *self.scalars.values()]
        flat = [x for v in values for x in (v if isinstance(v, tuple) else (v,))]
        return [v for v in flat if isinstance(v, fx.Node)]


class CallContext(NamedTuple):
    """Under what the call ran: module.training, whether autograd records through it, autocast, device."""

    training: bool
    needs_grad: bool
    autocast: bool
    device: torch.device | None


@dataclass(frozen=True)
class Site:
    """One call of an extensible module in a graph: which (`identity`), where (`start`..`end`,
    `nodes`; `marked` when between markers), how it binds (`binding`, None when it cannot) and
    under what (`context`). `problem` says why it cannot be substituted; `call_index` counts the
    module's calls in the graph; `enclosing` is the index of the site this one lies inside."""

    identity: SiteIdentity
    start: int
    end: int
    nodes: tuple[fx.Node, ...]
    marked: bool
    context: CallContext
    binding: Binding | None = None
    problem: Rejected | None = None
    call_index: int = 0
    enclosing: int | None = None
    trace_plan: int = 0  # the id of the plan chosen while dynamo traced (see trace_time.py), else 0

    @property
    def module(self) -> nn.Module | None:
        return self.identity.module

    @property
    def layer_name(self) -> str:
        return self.identity.layer_name

    @property
    def module_class(self) -> str:
        return self.identity.module_class

    @property
    def path(self) -> str:
        return self.identity.path

    @property
    def needs_grad(self) -> bool:
        return self.context.needs_grad

    @property
    def device(self) -> torch.device | None:
        return self.context.device

    @property
    def outputs(self) -> tuple[fx.Node | None, ...]:
        return self.binding.outputs if self.binding is not None else ()


def find_sites(gm: fx.GraphModule, example_inputs: Sequence[Any], frame: FrameInfo) -> list[Site]:
    """Every call of an extensible module in `gm`, outermost first at equal start, in graph order."""
    nodes = list(gm.graph.nodes)
    graph = _GraphIndex(gm, nodes, example_inputs, frame)
    marked, elsewhere = _marked_sites(graph)
    taken = {s.identity.key for s in [*marked, *elsewhere] if s.identity.key is not None}
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
        for node in placeholders:  # graphs split by DDPOptimizer get fake parameters: bind by source
            real = frame.resolve(placeholder_source(node) or "")
            if isinstance(real, torch.Tensor):
                self.tensor_node.setdefault(id(real), node)
        for node in nodes:
            if node.op == "get_attr":
                value = _get_attr(gm, str(node.target))
                if isinstance(value, torch.Tensor):
                    self.tensor_node.setdefault(id(value), node)
        self.scalars, self.scalar_placeholders = _scalar_attrs(placeholders, frame)
        self.in_autocast = _autocast_nodes(nodes)

    def module_tensors(self, module: nn.Module) -> dict[str, fx.Node]:
        found = {}
        for name, tensor in named_tensors(module):
            node = self.tensor_node.get(id(tensor))
            if node is not None:
                found[name] = node
        return found


def _get_attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


def _source_name(source: Any) -> str | None:
    name = getattr(source, "name", None)
    if callable(name):  # a method in some torch versions, a property in others
        name = name()
    return name if isinstance(name, str) else None


def placeholder_source(node: fx.Node) -> str | None:
    """The dynamo source a placeholder stands for (`L['self']._modules['norm']._parameters['weight']`).

    dynamo records it as `meta["grapharg"].source`; graphs that DDPOptimizer split off keep it as
    `node._dynamo_source` (their example inputs are fake, so the real tensor is found through it).
    """
    grapharg = node.meta.get("grapharg")
    source = getattr(grapharg, "source", None) or getattr(node, "_dynamo_source", None)
    return _source_name(source) if source is not None else None


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
        owner = frame.resolve(base) if base else None
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


def _stack(node: fx.Node) -> dict[str, tuple[str, type]]:
    return node.meta.get("nn_module_stack") or {}


def example_value(node: Any) -> Any:
    """The example (fake) value dynamo recorded for a node; constants are their own example."""
    return node.meta.get("example_value", node.meta.get("val")) if isinstance(node, fx.Node) else node


def _first_device(values: Sequence[Any]) -> torch.device | None:
    for value in values:
        example = example_value(value)
        if isinstance(example, torch.Tensor):
            return example.device
    return None


def requires_grad(values: Sequence[Any]) -> bool:
    return any(isinstance(e, torch.Tensor) and e.requires_grad for e in map(example_value, values))


# -- marked calls ---------------------------------------------------------------------------------


def _marked_sites(graph: _GraphIndex) -> tuple[list[Site], list[Site]]:
    """The marked calls in the graph, and the tails of calls decided while traced that began in an
    earlier graph (reported there; their nodes here are no call of their own)."""
    sites: list[Site] = []
    elsewhere: list[Site] = []
    open_enters: list[fx.Node] = []
    for node in graph.nodes:
        if node.op != "call_function" or not markers.is_marker(node.target):
            continue
        if node.target is markers.enter:
            open_enters.append(node)
            continue
        token = node.args[0][0]
        depth = next((i for i in range(len(open_enters) - 1, -1, -1) if open_enters[i].args[0][0] == token), None)
        if depth is None:
            tail = _partial(graph, node, f"its enter marker is in an earlier graph ({_cut_by(graph)} inside the forward)")
            # a call decided while traced is reported where it starts
            (elsewhere if _plan_of(node) else sites).append(tail)
            continue
        while len(open_enters) > depth + 1:
            sites.append(_open(graph, open_enters.pop(), f"it has no exit marker ({_cut_by(graph)} inside the forward)"))
        sites.append(_marked(graph, open_enters.pop(), node))
    for enter in open_enters:
        why = f"it has no exit marker ({_cut_by(graph)} inside the forward, or its output is unused or not a tensor or tuple of tensors)"
        sites.append(_open(graph, enter, why))
    return sites, elsewhere


def _plan_of(marker: fx.Node) -> int:
    """The trace-time plan id an enter or exit marker carries (0: the pass decides the call)."""
    meta = marker.args[0]
    return meta[5] if marker.target is markers.enter else (meta[2] if len(meta) > 2 else 0)


def _cut_by(graph: _GraphIndex) -> str:
    if graph.frame.bucketed:
        return "a gradient-bucket boundary of DDPOptimizer, or a graph break,"
    return "graph break"


def _open(graph: _GraphIndex, enter: fx.Node, why: str) -> Site:
    """A call whose exit is not in this graph. One decided while dynamo traced already runs its
    kernel, whatever cut the graph after it: it is that site, not a partial one."""
    plan = _plan_of(enter)
    if not plan:
        return _partial(graph, enter, why)
    i = graph.position[enter]
    context = CallContext(training=bool(enter.args[0][1]), needs_grad=bool(enter.args[0][1]) or requires_grad(enter.args[1:]),
                          autocast=enter in graph.in_autocast, device=_first_device(enter.args[1:]))
    return Site(identity=_identity(graph, enter), start=i, end=i, nodes=(enter,), marked=True, context=context, trace_plan=plan)


def _identity(graph: _GraphIndex, marker: fx.Node) -> SiteIdentity:
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
    if marker.target is markers.enter:
        _token, _training, _names, marked_class, layer_name, _plan = marker.args[0]
        if module is None or markers.class_name(type(module)) != marked_class:
            # no such module, or the innermost call is another module's: this forward was called directly
            module, name = None, marked_class.rsplit(".", 1)[-1]
            if not (cls is not None and markers.class_name(cls) == marked_class):
                key = None
    if key is None and module is None and marker.target is markers.enter:
        module, key, path, name = _frame_module(graph, marker, name)
    shown = graph.frame.display(path) if key is not None else f"<{name}>"
    host = None
    if key is not None and path.startswith("G[") and len(stack) >= 2:
        # a global function module (`kernels`' use_kernelized_func): name it after its caller, as
        # kernelize names the caller's own copy
        host_path = stack[-2][1][0]
        host = graph.frame.resolve(host_path)
        shown = f"{graph.frame.display(host_path)}.{layer_name}"
    return SiteIdentity(
        module=module,
        module_class=name,
        layer_name=layer_name or "?",
        path=shown,
        key=(key, path) if key is not None else None,
        host=host if isinstance(host, nn.Module) else None,
    )


def _frame_module(graph: _GraphIndex, marker: fx.Node, name: str) -> tuple[Any, Any, str, str]:
    """A marked forward that dynamo compiles as a frame of its own (after a graph break in its
    caller, e.g. the root's leftovers under FSDP2): the module is the frame's `self`."""
    this = graph.frame.locals.get("self")
    if not _stack(marker) and isinstance(this, nn.Module) and markers.class_name(type(this)) == marker.args[0][3]:
        return this, str(id(this)), "L['self']", type(this).__name__
    return None, None, "", name


def _unresolved(identity: SiteIdentity) -> Rejected:
    where = f"at {identity.key[1]}" if identity.key else "(its forward was called directly, not through the module)"
    return Rejected(Reason.UNKNOWN_MODULE, f"cannot find the module {where} in the compiled frame")


_NO_CONTEXT = CallContext(training=False, needs_grad=False, autocast=False, device=None)


def _partial(graph: _GraphIndex, marker: fx.Node, why: str) -> Site:
    i = graph.position[marker]
    return Site(
        identity=_identity(graph, marker), start=i, end=i, nodes=(marker,), marked=True, context=_NO_CONTEXT,
        problem=Rejected(Reason.PARTIAL_REGION, f"only part of the call is in this graph: {why}"),
    )


def _marked(graph: _GraphIndex, enter: fx.Node, exit_: fx.Node) -> Site:
    identity = _identity(graph, enter)
    module = identity.module
    start, end = graph.position[enter], graph.position[exit_]
    nodes = tuple(graph.nodes[start : end + 1])
    _token, training, names, _class, _layer, trace_plan = enter.args[0]
    if identity.host is not None:  # a global function module's own flag is never set by model.eval()
        training = identity.host.training
    values = iter(enter.args[1:])
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    problem = None
    for key, kind in names:
        if kind == markers.UNSUPPORTED:
            if not trace_plan:
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
        names = ", ".join(n.name for n in strays[:3])
        problem = Rejected(Reason.PARTIAL_REGION, f"nodes from outside the call lie between its markers: {names}")
    if module is None:
        problem = _unresolved(identity)
    results = exit_.args[1:]
    binding = Binding(
        args=tuple(args), kwargs=kwargs, outputs=tuple(outputs), output_spec=exit_.args[0][1],
        tensors=graph.module_tensors(module) if module is not None else {},
        scalars=graph.scalars.get(id(module), {}),
    )
    context = CallContext(training=bool(training), needs_grad=bool(training) or requires_grad(results),
                          autocast=enter in graph.in_autocast, device=_first_device([*results, *enter.args[1:]]))
    return Site(identity=identity, start=start, end=end, nodes=nodes, marked=True, context=context,
                binding=binding, problem=problem, trace_plan=trace_plan)


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
            if graph.frame.bucketed and markers.MARKED_CLASSES.get(markers.class_name(cls)) is cls:
                # a marked call without its markers here: a piece DDPOptimizer cut out of a call
                # that is reported where its markers are
                break
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
    identity = SiteIdentity(module=module, module_class=cls.__name__,
                            layer_name=layer_name_of(module if module is not None else cls) or "?",  # type: ignore[arg-type]
                            path=graph.frame.display(key[1]), key=key)

    def site(context: CallContext, binding: Binding | None = None, problem: Rejected | None = None) -> Site:
        return Site(identity, start, end, tuple(nodes), False, context, binding, problem)

    autocast = nodes[0] in graph.in_autocast
    if module is None:
        missing = Rejected(Reason.UNKNOWN_MODULE, f"cannot find the module at {key[1]} in the compiled frame")
        return site(CallContext(False, False, autocast, None), problem=missing)
    tensors = graph.module_tensors(module)
    tensor_nodes = set(tensors.values())
    inputs = [a for n in nodes for a in n.all_input_nodes if a not in members]
    activations = list(dict.fromkeys(
        a for a in inputs
        if a not in tensor_nodes and a not in graph.scalar_placeholders and isinstance(example_value(a), torch.Tensor)
    ))
    leaving = [n for n in nodes if isinstance(example_value(n), torch.Tensor) and any(u not in members for u in n.users)]
    context = CallContext(training=module.training, needs_grad=module.training or requires_grad(leaving),
                          autocast=autocast, device=_first_device(leaving or activations))
    own = Binding(tensors=tensors, scalars=graph.scalars.get(id(module), {}))
    problem = _unmarked_problem(graph, key, module, members, start, end, activations, leaving)
    if problem is not None:
        return site(context, own, problem)
    return site(context, replace(own, args=(activations[0],), outputs=(leaving[0],)))


def _unmarked_problem(graph: _GraphIndex, key: tuple[str, str], module: nn.Module, members: set[fx.Node], start: int, end: int,
                      activations: list[fx.Node], leaving: list[fx.Node]) -> Rejected | None:
    if key[0] in graph.frame.open_keys:
        return Rejected(Reason.PARTIAL_REGION, "the graph was cut inside this call (nested graph break)")
    if any(n not in members and n.op != "placeholder" for n in graph.nodes[start : end + 1]):
        return Rejected(Reason.PARTIAL_REGION, "the call's nodes are interleaved with other code")
    if not _single_input(module):
        params = ", ".join(list(original_signature(module).parameters)[1:])
        return Rejected(Reason.AMBIGUOUS_BINDING,
                        f"forward({params}) is not one tensor in, and the call was not marked by use_kernel_forward_from_hub")
    if len(activations) != 1 or len(leaving) != 1:
        return Rejected(Reason.AMBIGUOUS_BINDING, f"the region has {len(activations)} tensor inputs and {len(leaving)} tensor outputs "
                        "besides the module's own; one of each binds")
    return None


def _single_input(module: nn.Module) -> bool:
    params = list(original_signature(module).parameters.values())[1:]
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return len(params) == 1 and params[0].kind in positional and params[0].default is inspect.Parameter.empty


# -- nesting and call order -----------------------------------------------------------------------


def _with_nesting(sites: list[Site]) -> list[Site]:
    result: list[Site] = []
    calls: dict[int, int] = {}
    stack: list[int] = []
    for site in sites:
        while stack and result[stack[-1]].end < site.start:
            stack.pop()
        enclosing = stack[-1] if stack and site.end <= result[stack[-1]].end else None
        if site.module is None:
            module_id: Any = -len(result) - 1
        else:  # a shared global function module counts its calls per caller, as kernelize sees them
            module_id = (id(site.module), site.path) if site.identity.host is not None else id(site.module)
        index = calls.get(module_id, 0)
        calls[module_id] = index + 1
        result.append(replace(site, enclosing=enclosing, call_index=index))
        stack.append(len(result) - 1)
    return result
