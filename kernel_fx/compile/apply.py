"""Apply prepared substitutions to a graph — the pass's only mutator — then remove every marker,
`lint()` and `recompile()`.

Facts this relies on (DESIGN §4): region inputs go stale once an earlier region is replaced (so
outputs are remapped), and `inserting_before(last.next)` keeps multi-node insertions in order.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx

from .. import markers
from ..graph_records import SiteDiff, SubstitutionKind, op_lines
from . import opaque
from .prepare import Substitution
from .sites import Site, example_value
from .standin import KernelCall


def apply(gm: fx.GraphModule, substitutions: list[Substitution]) -> list[SiteDiff]:
    """Substitute in graph order, remove every marker, then `lint()` and `recompile()`.

    Returns each substituted site's ops before and after, for the report."""
    graph = gm.graph
    diffs: list[SiteDiff] = []
    remap: dict[fx.Node, fx.Node] = {}  # outputs of earlier sites -> the kernel values replacing them
    for sub in sorted(substitutions, key=lambda s: s.site.start):
        site = sub.site
        inputs = [remap.get(n, n) for n in sub.inputs]
        last = site.nodes[-1]
        anchor = last.next  # insert after the whole region: every input is defined by then
        before = op_lines(site.nodes)
        stack = site.nodes[0].meta.get("nn_module_stack")
        with graph.inserting_before(anchor):
            if sub.how is SubstitutionKind.TRACED:
                outs = _insert_traced(graph, sub, inputs)
            else:
                outs = _insert_call(graph, sub, inputs)
        for node in _between(last, anchor):
            node.meta.setdefault("example_value", node.meta.get("val"))
            if stack is not None:
                node.meta["nn_module_stack"] = dict(stack)
        diffs.append(SiteDiff(site.path, site.call_index, site.layer_name, sub.how, before, op_lines(_between(last, anchor))))
        for old, new in zip(site.outputs, outs):
            if old is not None:
                old.replace_all_uses_with(new)
                remap[old] = new
        _erase_dead([*site.nodes, *(o for o in site.outputs if o is not None and o not in site.nodes)], graph)
    markers.strip_markers(graph)
    graph.lint()
    gm.recompile()
    return diffs


def _insert_traced(graph: fx.Graph, sub: Substitution, inputs: list[fx.Node]) -> list[fx.Node]:
    """The kernel's traced graph copied in; returns its outputs."""
    if sub.traced is None:
        raise ValueError("a TRACED substitution carries its traced graph")
    placeholders = [n for n in sub.traced.graph.nodes if n.op == "placeholder"]
    return list(graph.graph_copy(sub.traced.graph, dict(zip(placeholders, inputs))))  # type: ignore[arg-type]


def _insert_call(graph: fx.Graph, sub: Substitution, inputs: list[fx.Node]) -> list[fx.Node]:
    """One node calling the kernel (a `KernelCall`, or the opaque op) and a getitem per output."""
    site = sub.site
    if sub.how is SubstitutionKind.CALL:
        call = graph.call_function(KernelCall(sub.forward, sub.spec, f"kernel_fx_{site.layer_name}"), tuple(inputs))
    else:
        entry = opaque.OpaqueSite(sub.forward, sub.original, sub.spec, sub.written, site.needs_grad, sub.effects_known)
        site_id = opaque.register(entry, site.layer_name)
        if sub.written:  # declared, so functionalization orders every read of them around the call
            read = [n for i, n in enumerate(inputs) if i not in sub.written]
            written = [n for i, n in enumerate(inputs) if i in sub.written]
            examples = tuple(example_value(o) for o in _output_values(site))
            call = graph.call_function(opaque.writing_op(len(examples)), (site_id, read, written))
            if len(examples) == 1:  # this op returns one tensor as itself, not in a list
                call.meta["example_value"] = examples[0]
                return [call]
        else:
            call = graph.call_function(torch.ops.kernel_fx.opaque_kernel.default, (site_id, inputs))
    examples = tuple(example_value(o) for o in _output_values(site))
    call.meta["example_value"] = examples
    outs = []
    for i, example in enumerate(examples):
        out = graph.call_function(operator.getitem, (call, i))
        out.meta["example_value"] = example
        outs.append(out)
    return outs


def _between(first: fx.Node, stop: fx.Node) -> list[fx.Node]:
    """The nodes after `first` and before `stop`."""
    found, node = [], first.next
    while node is not stop:
        found.append(node)
        node = node.next
    return found


def _output_values(site: Site) -> list[Any]:
    """The values the original call returned, one per tensor output."""
    if site.marked:
        return list(site.nodes[-1].args[1:])
    return list(site.outputs)


def _erase_dead(nodes: list[fx.Node], graph: fx.Graph) -> None:
    """Erase, last first, the nodes of a replaced region that nothing reads any more. Nodes still
    read from outside (a symbolic size dynamo reuses later) stay, with what they need."""
    markers.unalias(graph, [n for n in nodes if n.op == "call_function" and n.target is markers.enter])
    seen: set[fx.Node] = set()
    for node in reversed(nodes):
        if node in seen or getattr(node, "_erased", False):
            continue
        seen.add(node)
        if not node.users and node.op not in ("placeholder", "output"):
            graph.erase_node(node)
