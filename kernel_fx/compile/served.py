"""The layers one compiled graph serves: FSDP2 users compile layer by layer (`layer.compile()`),
and dynamo traces the first layer's frame once and reuses its graph for every layer whose guards
pass. The backend sees only the first; the report must name every layer the graph runs for.

`ServedLayers` wraps the compiled callable of a graph whose frame's `self` sits inside a model
(`FrameInfo.prefix`, e.g. `layers.0`). Each call passes that layer's parameters as graph inputs:
a parameter never seen before is looked up once among the model's modules of the same class, and
that module's sites join the graph's record under its own path (`layers.1.input_layernorm`).
After that a call costs one dictionary look-up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import fx, nn

from ..graph_records import GraphRecord
from .frame import FrameInfo, normalize_path, sharded_roots
from .sites import placeholder_source


class ServedLayers:
    """`compiled` with a watch on which layer each call serves (see the module docstring)."""

    def __init__(self, compiled: Callable[..., Any], record: GraphRecord, frame: FrameInfo, index: int, attr: str,
                 on_new: Callable[[GraphRecord, list[Any]], None]) -> None:
        self.compiled = compiled
        self.record = record
        self.frame = frame
        self.index = index  # the graph input that is a parameter of `self`
        self.attr = attr  # its dotted name on `self`
        self.on_new = on_new
        self.seen: dict[int, str] = {}

    @classmethod
    def wrap(cls, compiled: Callable[..., Any], gm: fx.GraphModule, example_inputs: Sequence[Any], record: GraphRecord,
             frame: FrameInfo, on_new: Callable[[GraphRecord, list[Any]], None]) -> Callable[..., Any]:
        """`compiled`, watched when its frame is a layer of a model and it reads a parameter of that layer."""
        if not frame.prefix or not record.decisions:
            return compiled
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        for i, node in enumerate(placeholders[: len(example_inputs)]):
            source = normalize_path(placeholder_source(node) or "")
            if source.startswith("L['self'].") and isinstance(frame.resolve(source), torch.Tensor):
                return cls(compiled, record, frame, i, source[len("L['self'].") :], on_new)
        return compiled

    def __call__(self, *args: Any) -> Any:
        flat = args[0] if len(args) == 1 and isinstance(args[0], list) else args  # boxed calling convention
        if self.index < len(flat) and id(flat[self.index]) not in self.seen:
            self._new_layer(flat[self.index])
        return self.compiled(*args)

    def __getattr__(self, name: str) -> Any:  # `_boxed_call` and the like, as the compiled callable has them
        return getattr(self.compiled, name)

    def _new_layer(self, tensor: torch.Tensor) -> None:
        this = self.frame.locals.get("self")
        path = _layer_path(type(this), self.attr, tensor)
        self.seen[id(tensor)] = path or ""
        if path is None or path == self.frame.prefix:
            return
        old = self.frame.prefix
        served = [replace(d, path=path + d.path[len(old):]) for d in self.record.decisions if d.path == old or d.path.startswith(old + ".")]
        self.record.decisions.extend(served)
        self.on_new(self.record, served)


def _layer_path(cls: type, attr: str, tensor: torch.Tensor) -> str | None:
    """The path of the module of class `cls` whose `attr` is `tensor`, in a sharded model."""
    for root in sharded_roots():
        for path, module in root.named_modules():
            if type(module) is cls and _attr(module, attr) is tensor:
                return path
    return None


def _attr(module: nn.Module, dotted: str) -> Any:
    obj: Any = module
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj
