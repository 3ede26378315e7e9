"""What the backend knows of the frame dynamo is compiling: its locals and globals (to find modules
by the source paths in `nn_module_stack`), the module calls still open when the graph was cut, and
how those paths read in a report.

>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(2, 2))
>>> FrameInfo({"self": model}).resolve("L['self']._modules['0']") is model[0]
True
>>> display_path("L['self'].layers.0.mlp"), display_path("G['model'].norm"), display_path("L['args'][0].model.norm")
('layers.0.mlp', 'model.norm', 'model.norm')
>>> display_path("L['self'].layers.0.__dict__['_modules']['_checkpoint_wrapped_module']._modules['mlp']")
'layers.0.mlp'

"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_ROOT = re.compile(r"^(L|G)\['([^']+)'\]")
_STEP = re.compile(r"\.([A-Za-z_0-9]+)|\[(\d+)\]|\['([^']+)'\]")
_NOISE = re.compile(r"\.(?:__dict__\[(['\"])_modules\1\]\[|_(?:modules|parameters|buffers)\[)(['\"])([^'\"\]]+)\2\]")
# torch.distributed's checkpoint_wrapper: state dicts leave it out, and so do reports
_CHECKPOINT_WRAPPER = "._checkpoint_wrapped_module"


@dataclass(frozen=True)
class FrameInfo:
    """The compiled frame's locals and globals, the keys of module calls still open, and whether
    DDPOptimizer splits the frame's graph at gradient-bucket boundaries (`bucketed`)."""

    locals: Mapping[str, Any] = field(default_factory=dict)
    globals: Mapping[str, Any] = field(default_factory=dict)
    open_keys: frozenset[str] = frozenset()
    bucketed: bool = False
    prefix: str = ""  # where `L['self']` sits in the model the user wrapped (FSDP2 compiles layer by layer)

    def display(self, path: str) -> str:
        """How a report names the module at a dynamo source path: `display_path`, with the path
        of the compiled module in its model in front (`input_layernorm` -> `layers.0.input_layernorm`)."""
        shown = display_path(path)
        if self.prefix and _ROOT.match(path) and path.startswith("L['self']"):
            return f"{self.prefix}.{shown}" if shown else self.prefix
        return shown

    def resolve(self, path: str) -> Any:
        """The object at a dynamo source path such as `L['self'].layers.0.mlp`, or None."""
        match = _ROOT.match(normalize_path(path))
        if match is None:
            return None
        scope = self.locals if match.group(1) == "L" else self.globals
        if match.group(2) not in scope:
            return None
        obj = scope[match.group(2)]
        rest = normalize_path(path)[match.end():]
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


def current_frame() -> FrameInfo:
    """The frame dynamo is compiling now, with its still open module calls (empty outside dynamo)."""
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        tx = InstructionTranslator.current_tx()
    except Exception:  # noqa: BLE001 - not inside dynamo: modules found only through markers
        return FrameInfo()
    open_keys: set[str] = set()
    current = getattr(tx.output, "current_tx", None)
    while current is not None:
        open_keys.update(getattr(current, "nn_module_stack", {}) or {})
        current = getattr(current, "parent", None)
    from ..markers import backend_layers

    bucketed = any(getattr(getattr(b, "__self__", None), "backend_compile_fn", None) is not None
                   for b in backend_layers(getattr(tx.output, "compiler_fn", None)))
    f_locals = getattr(tx, "f_locals", {}) or {}
    prefix = model_path(f_locals.get("self")) or ""
    return FrameInfo(f_locals, getattr(tx, "f_globals", {}) or {}, frozenset(open_keys), bucketed, prefix)


def sharded_roots() -> list[Any]:
    """The root modules of FSDP2 (`fully_shard`) models in this process: the models the user wrapped."""
    try:
        from torch.distributed._composable_state import _module_state_mapping
        from torch.distributed.fsdp._fully_shard._fsdp_state import FSDPState
    except Exception:  # noqa: BLE001 - no torch.distributed, or these internals moved: no roots known
        return []
    roots = []
    for module, ref in list(_module_state_mapping.items()):
        state = ref() if callable(ref) and not isinstance(ref, FSDPState) else ref  # weak references to the states
        if isinstance(state, FSDPState) and state._is_root and module is state._modules[0]:
            roots.append(module)
    return roots


def model_path(module: Any) -> str | None:
    """The path of `module` in the FSDP2 model holding it (`layers.0`), or None when it is no part
    of one, or is its root. FSDP2 users compile each layer (`layer.compile()`), and dynamo then
    compiles layers and the root's leftovers as frames of their own, whose `self` is not the model."""
    if module is None or "torch.distributed" not in sys.modules:
        return None
    for root in sharded_roots():
        for path, candidate in root.named_modules():
            if candidate is module:
                return path or None
    return None


def current_compile_id() -> str | None:
    """dynamo's id of the compile in progress (`0/1`: frame 0, recompile 1), or None."""
    try:
        from torch._guards import CompileContext

        compile_id = CompileContext.current_compile_id()
    except Exception:  # noqa: BLE001
        return None
    return None if compile_id is None else str(compile_id)


def normalize_path(path: str) -> str:
    """Dynamo's source name in `nn_module_stack` spelling: `._modules['a']` -> `.a`."""
    return _NOISE.sub(r".\3", path)


def display_path(path: str) -> str:
    """`L['self'].layers.0.mlp` -> `layers.0.mlp`; `G['model'].norm` -> `model.norm`.

    The compiled module itself is `L['self']`, `L['fn']` when dynamo starts in a wrapper, or
    `L['args'][0]` when a wrapper takes it positionally (transformers' output-capturing forward).
    """
    path = normalize_path(path).replace(_CHECKPOINT_WRAPPER, "")
    match = _ROOT.match(path)
    if match is None:
        return path
    rest = path[match.end():]
    if match.group(1) == "L" and match.group(2) == "args" and rest.startswith("[0]"):
        return rest[3:].lstrip(".")
    return rest.lstrip(".") if match.group(1) == "L" and match.group(2) in ("self", "fn") else match.group(2) + rest
