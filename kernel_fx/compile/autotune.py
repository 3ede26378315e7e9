"""Keep a kernel only where it is faster: `options={"autotune": True}`.

For each distinct substituted call — same kernel, same input shapes, strides and dtypes, same
need for a backward — two small graphs are compiled by the inner compiler and timed on real
values: the call's region as dynamo traced it, and the same region with the kernel put in exactly
as `rewrite.apply` puts it in the whole graph. The kernel stays when its median is at most
`MARGIN` times the original's; otherwise the site keeps its original forward with
`Reason.SLOWER_THAN_ORIGINAL`. Timings and choices go to `GraphRecord.autotune`.

Real values: dynamo hands the backend real example inputs, not the values inside the graph, so
the graph as traced runs once, eagerly, and the values read by the calls are kept. That run
changes no model state: graph inputs written in place are cloned first, the random number
generators are restored afterwards, and every timed graph runs on copies.

Timing: medians over three alternating rounds (original, kernel, original, ...), each about
`ROUND_SECONDS` long, after warm-up; CUDA events on a GPU, `time.perf_counter` on the CPU. Only
the forward where autograd does not record through the call; forward and backward where it does.

Cost, paid only with the option on: one eager run of each graph, and per distinct call two
compiles by the inner compiler (inductor: seconds each) plus about 0.1 s of timing. A graph whose
eager run fails is compiled as without the option, with `GraphRecord.autotune_note` saying why;
a call whose timing fails keeps its kernel, with a note on its result.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import fx

from ..report import Reason, Rejected
from .match import Site, _example
from .records import AutotuneResult
from .rewrite import (
    CALL,
    TRACED,
    Substitution,
    _example_key,
    _first_line,
    _spec_key,
    _trace,
    apply,
    strip_markers,
)
from .standin import Slot

logger = logging.getLogger(__name__)

MARGIN = 0.98  # keep a kernel when kernel_ms <= MARGIN * original_ms: a tie keeps the original
ROUND_SECONDS = 0.01  # timed per candidate and round
_ROUNDS = 3
_WARMUP = 3
_MAX_REPS = 500

Compiler = Callable[[fx.GraphModule, list[Any]], Callable[..., Any]]


class Tuner:
    """Times the substitutions of one graph against their original regions.

    `check(sub)` is None to keep the kernel, or the `Rejected` that keeps the original. Built
    before the graph is rewritten; runs the graph (once, on the first check) only then, keeping
    the values read by one call per layer class and input signature: calls alike are timed on
    the same values, so 32 identical layers keep one layer's inputs alive, not 32.
    """

    def __init__(self, gm: fx.GraphModule, example_inputs: Sequence[Any], sites: Sequence[Site],
                 compile_fn: Compiler, inner: str) -> None:
        self.gm = gm
        self.example_inputs = example_inputs
        self.compile_fn = compile_fn
        self.inner = inner
        self.results: list[AutotuneResult] = []
        self.note: str | None = None
        self._alike: dict[tuple, list[fx.Node]] = {}  # signature -> inputs of its first call
        for site in sites:
            if site.module is not None:
                outside = _outside(site, _slot_nodes(site))
                self._alike.setdefault(_signature(site, outside), outside)
        self._values: dict[fx.Node, Any] | None = None
        self._groups: dict[tuple, int] = {}

    def check(self, sub: Substitution) -> Rejected | None:
        values = self._real_values()
        if values is None:
            return None
        site = sub.site
        label = f"{site.path or '<root>'} #{site.call_index}"
        outside = _outside(site, _slot_nodes(site))
        signature = _signature(site, outside)
        key = (sub.forward, sub.how, _spec_key(sub.spec), site.autocast, signature)
        if key in self._groups:  # timed already: same kernel, same inputs
            i = self._groups[key]
            self.results[i] = replace(self.results[i], sites=(*self.results[i].sites, label))
        else:
            self._groups[key] = len(self.results)
            alike = [values[n] for n in self._alike[signature]]  # same shapes, strides, dtypes, in order
            self.results.append(self._time(sub, outside, alike, [_requires_grad(n) for n in outside], label))
        return self._verdict(self.results[self._groups[key]])

    def _verdict(self, result: AutotuneResult) -> Rejected | None:
        if result.kept:
            return None
        return Rejected(Reason.SLOWER_THAN_ORIGINAL,
                        f"kernel {result.kernel_ms:.3g} ms vs original {result.original_ms:.3g} ms ({self.inner})")

    def _real_values(self) -> dict[fx.Node, Any] | None:
        if self._values is None and self.note is None:
            try:
                needed = {n for outside in self._alike.values() for n in outside}
                self._values = _run_graph(self.gm, self.example_inputs, needed)
            except Exception as exc:  # noqa: BLE001 - any failure: compile as without autotune, and say why
                self.note = f"not timed: running the graph on its example inputs failed ({type(exc).__name__}: {_first_line(exc)})"
                logger.warning("kernel_fx autotune: %s", self.note)
        return self._values

    def _time(self, sub: Substitution, outside: list[fx.Node], values: list[Any], flags: list[bool], label: str) -> AutotuneResult:
        site = sub.site
        grad = site.needs_grad and any(flags)
        result = AutotuneResult(site.layer_name, _describe(sub, outside, values), None, None, True, (label,),
                                "forward+backward" if grad else "forward")
        if site.autocast:  # the small graphs would run without the autocast around the call
            return replace(result, note="not timed: the call runs under autocast")
        device = site.device or torch.device("cpu")
        try:
            with _rng_restored(values):
                original = _region(site, outside, values)[0]
                strip_markers(original.graph)
                original.graph.lint()
                original.recompile()
                kernel = _with_kernel(sub, outside, values)
                runs = [_compiled_run(gm, self.compile_fn, values, flags, grad) for gm in (original, kernel)]
                original_ms, kernel_ms = _race(runs, device)
        except Exception as exc:  # noqa: BLE001 - keep the kernel, as without autotune, and say why
            logger.warning("kernel_fx autotune: timing %s failed: %s", label, exc)
            return replace(result, note=f"not timed ({type(exc).__name__}: {_first_line(exc)})")
        kept = kernel_ms <= MARGIN * original_ms
        logger.info("kernel_fx autotune %s (%s): kernel %.4f ms, original %.4f ms -> %s",
                    label, result.shapes, kernel_ms, original_ms, "kernel" if kept else "original")
        return replace(result, kernel_ms=kernel_ms, original_ms=original_ms, kept=kept)


# -- real values ----------------------------------------------------------------------------------


class _Capture(fx.Interpreter):
    """Runs a graph, keeping the values of some nodes."""

    def __init__(self, gm: fx.GraphModule, needed: set[fx.Node]) -> None:
        super().__init__(gm)
        self.needed = needed
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n in self.needed:
            self.values[n] = result
        return result


def _run_graph(gm: fx.GraphModule, example_inputs: Sequence[Any], needed: set[fx.Node]) -> dict[fx.Node, Any]:
    """The values of `needed`, from one eager run of the graph (not yet rewritten) on real inputs."""
    from torch._subclasses.fake_tensor import FakeTensor

    args = [_concrete(x) for x in example_inputs]
    if any(isinstance(a, FakeTensor) for a in args):
        raise ValueError("the example inputs are fake tensors")
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for i in _written_inputs(gm, placeholders):  # leave the model's parameters and buffers as they are
        args[i] = args[i].detach().clone(memory_format=torch.preserve_format)
    capture = _Capture(gm, needed)
    with _alone(), torch.no_grad(), _rng_restored(args):
        capture.run(*args)
    return capture.values


def _concrete(value: Any) -> Any:
    """A symbolic size or scalar dynamo passes as an example input, as the number it stands for."""
    if isinstance(value, torch.SymInt):
        from torch.fx.experimental.symbolic_shapes import optimization_hint

        return optimization_hint(value)
    if isinstance(value, (torch.SymFloat, torch.SymBool)):
        hint = value.node.hint
        if hint is None:
            raise ValueError(f"the example input {value} has no value")
        return hint
    return value


_INPLACE_OPERATORS = frozenset({
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv, operator.imod,
    operator.ipow, operator.iand, operator.ior, operator.ixor, operator.ilshift, operator.irshift,
    operator.imatmul, operator.setitem,
})


def _written(node: fx.Node) -> list[Any]:
    """The values an op writes in place, as far as its spelling tells: `add_`, `x[i] = v`, `+=`,
    `inplace=True`, `out=`, and aten ops whose schema writes an argument."""
    written: list[Any] = []
    if node.op == "call_method":
        name = str(node.target)
        if (name.endswith("_") and not name.startswith("_")) or name == "__setitem__" or (name.startswith("__i") and name.endswith("__")):
            written.append(node.args[0])
    elif node.op == "call_function":
        target = node.target
        name = getattr(target, "__name__", "")
        schema = getattr(target, "_schema", None)
        if target in _INPLACE_OPERATORS or (name.endswith("_") and not name.startswith("_")) or node.kwargs.get("inplace") is True:
            written.append(node.args[0] if node.args else None)
        elif schema is not None and schema.is_mutable:
            for i, arg in enumerate(schema.arguments):
                if arg.alias_info is not None and arg.alias_info.is_write:
                    written.append(node.args[i] if i < len(node.args) else node.kwargs.get(arg.name))
    out = node.kwargs.get("out")
    written.extend(out if isinstance(out, (list, tuple)) else [out])
    return [w for w in written if isinstance(w, fx.Node)]


def _written_inputs(gm: fx.GraphModule, placeholders: list[fx.Node]) -> set[int]:
    """Positions of the graph inputs an op may write to, through any chain of first arguments
    (views, getitems): cloning one too many costs memory, one too few would change the model."""
    position = {n: i for i, n in enumerate(placeholders)}
    found: set[int] = set()
    for node in gm.graph.nodes:
        for value in _written(node):
            seen: set[fx.Node] = set()
            while value.op != "placeholder" and value not in seen:
                seen.add(value)
                first = value.args[0] if value.args else None
                if not isinstance(first, fx.Node):
                    break
                value = first
            if value.op == "placeholder":
                found.add(position[value])
            elif value.op == "get_attr":
                raise ValueError(f"{node.format_node()} writes to the graph's attribute {value.target}")
    return found


@contextlib.contextmanager
def _rng_restored(values: Sequence[Any]) -> Iterator[None]:
    """Runs here draw no numbers from the model's random streams."""
    devices = sorted({v.device.index or 0 for v in values if isinstance(v, torch.Tensor) and v.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        yield


@contextlib.contextmanager
def _alone() -> Iterator[None]:
    """Run and compile small graphs in the middle of dynamo's compile of the big one as if alone:
    without its tracing context (whose fake mode and guards belong to the big graph), and with
    compile metrics of their own (AOTAutograd's lazy backward compile sets `is_forward` in the
    current metrics context; a second one in dynamo's raises "already been set")."""
    from torch._guards import tracing

    with tracing(None), _own_metrics():
        yield


@contextlib.contextmanager
def _own_metrics() -> Iterator[None]:
    try:
        from torch._dynamo import utils as dynamo_utils
        from torch._dynamo.metrics_context import MetricsContext

        tls = dynamo_utils._metrics_context_tls
    except (ImportError, AttributeError):  # another torch: nothing to isolate, or no way to
        yield
        return
    saved = getattr(tls, "metrics_context", None)
    tls.metrics_context = MetricsContext(on_exit=lambda *args: None)
    try:
        with tls.metrics_context:
            yield
    finally:
        if saved is None:
            del tls.metrics_context
        else:
            tls.metrics_context = saved


# -- the two small graphs -------------------------------------------------------------------------


def _slot_nodes(site: Site) -> list[fx.Node]:
    """The graph values a substitution of `site` reads (what `rewrite.prepare` puts in slots)."""
    values = [*site.args, *site.kwargs.values(), *site.tensors.values(), *site.scalars.values()]
    return [v for v in values if isinstance(v, fx.Node)]


def _copied(site: Site) -> list[fx.Node]:
    """The site's nodes, and its output getitems after the exit marker."""
    members = set(site.nodes)
    return [*site.nodes, *(o for o in site.outputs if o is not None and o not in members)]


def _outside(site: Site, extra: Sequence[fx.Node]) -> list[fx.Node]:
    """What the site's nodes read from outside them (graph inputs and attributes count as
    outside), then `extra`: the small graphs' inputs, in first-read order."""
    copied = _copied(site)
    inside = {n for n in copied if n.op not in ("placeholder", "get_attr")}
    found: dict[fx.Node, None] = {}
    for node in copied:
        if node in inside:
            found.update((a, None) for a in node.all_input_nodes if a not in inside)
        else:
            found[node] = None
    found.update((n, None) for n in extra)
    return list(found)


def _region(site: Site, outside: list[fx.Node], values: list[Any]) -> tuple[fx.GraphModule, dict[fx.Node, fx.Node]]:
    """The site's nodes as a graph of their own: inputs `outside`, outputs the call's used
    outputs. Node metadata comes from a run on `values` (dynamo's fake values belong to its own
    fake mode and symbols); returns the graph and where each original node went."""
    graph = fx.Graph()
    env = {n: graph.placeholder(n.name) for n in outside}
    for node in _copied(site):
        if node not in env:
            env[node] = graph.node_copy(node, env.__getitem__)
            env[node].meta = {k: v for k, v in node.meta.items() if k == "nn_module_stack"}
    used = [env[o] for o in site.outputs if o is not None]
    if not used:
        raise ValueError("the call's outputs are unused")
    graph.output(tuple(used))
    gm = fx.GraphModule(torch.nn.Module(), graph)
    _fill_meta(gm, values)
    return gm, env


def _fill_meta(gm: fx.GraphModule, values: list[Any]) -> None:
    """`example_value`/`val` of every node: fake tensors of a fresh fake mode (static shapes)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._pytree import tree_map

    fake_mode = FakeTensorMode()

    def fake(value: Any) -> Any:
        return fake_mode.from_tensor(value) if isinstance(value, torch.Tensor) else value

    class _Meta(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            result = super().run_node(n)
            n.meta["example_value"] = n.meta["val"] = tree_map(fake, result)
            return result

    with torch.no_grad():
        _Meta(gm).run(*[_fresh(v, False) for v in values])


def _with_kernel(sub: Substitution, outside: list[fx.Node], values: list[Any]) -> fx.GraphModule:
    """The region with the kernel substituted the way `apply` does it in the whole graph."""
    gm, env = _region(sub.site, outside, values)
    site = sub.site

    def move(value: Any) -> Any:
        return env[value] if isinstance(value, fx.Node) else value

    moved = replace(
        site,
        nodes=tuple(env[n] for n in site.nodes),
        args=tuple(map(move, site.args)),
        kwargs={k: move(v) for k, v in site.kwargs.items()},
        outputs=tuple(None if o is None else env[o] for o in site.outputs),
        tensors={k: env[v] for k, v in site.tensors.items()},
        scalars={k: env[v] for k, v in site.scalars.items()},
    )
    inputs = tuple(env[n] for n in sub.inputs)
    how, traced = sub.how, None
    if how == TRACED:  # retrace on this graph's fake values; a kernel call traces to the same ops
        found = _trace(sub.forward, sub.spec, [_example(n) for n in inputs])
        how, traced = (CALL, None) if isinstance(found, Exception) else (TRACED, found)
    apply(gm, [replace(sub, site=moved, inputs=inputs, how=how, traced=traced)])
    return gm


# -- timing ---------------------------------------------------------------------------------------


def _requires_grad(node: fx.Node) -> bool:
    example = _example(node)
    return isinstance(example, torch.Tensor) and example.requires_grad


def _fresh(value: Any, requires_grad: bool) -> Any:
    """A copy to run on: timed graphs may write to their inputs, and must not reach the model's."""
    if not isinstance(value, torch.Tensor):
        return value
    copy = value.detach().clone(memory_format=torch.preserve_format)
    return copy.requires_grad_(requires_grad and (copy.is_floating_point() or copy.is_complex()))


def _compiled_run(gm: fx.GraphModule, compile_fn: Compiler, values: list[Any], flags: list[bool], grad: bool) -> Callable[[], None]:
    """`gm` compiled by the inner compiler on copies of `values`, warmed up (lazy backward
    compiles included), as a function that runs it once: forward, or forward and backward."""
    args = [_fresh(v, grad and flag) for v, flag in zip(values, flags)]
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]

    def forward() -> None:
        with torch.no_grad():
            fn(*args)

    def forward_backward() -> None:
        with torch.enable_grad():
            for leaf in leaves:
                leaf.grad = None
            outs = [o for o in fn(*args) if isinstance(o, torch.Tensor) and o.requires_grad]
            torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    run = forward_backward if grad else forward
    with _alone(), (torch.enable_grad() if grad else torch.no_grad()):
        fn = compile_fn(gm, list(args))
        for _ in range(_WARMUP):
            run()
    return run


def _race(runs: list[Callable[[], None]], device: torch.device) -> list[float]:
    """Median milliseconds of each run, over rounds that alternate between them."""
    once = [_samples(run, 1, device)[0] for run in runs]
    reps = [max(3, min(_MAX_REPS, int(ROUND_SECONDS / max(seconds, 1e-7)))) for seconds in once]
    samples: list[list[float]] = [[] for _ in runs]
    for _ in range(_ROUNDS):
        for run, n, found in zip(runs, reps, samples):
            found.extend(_samples(run, n, device))
    return [statistics.median(found) * 1e3 for found in samples]


def _samples(run: Callable[[], None], n: int, device: torch.device) -> list[float]:
    """Seconds of each of `n` runs."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for start, end in events:
            start.record()
            run()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) / 1e3 for start, end in events]
    found = []
    for _ in range(n):
        start = time.perf_counter()
        run()
        found.append(time.perf_counter() - start)
    return found


def _signature(site: Site, outside: list[fx.Node]) -> tuple:
    """What makes two calls time alike: the layer class, whether autograd records, and the
    shapes, strides, dtypes and devices of what they read (as dynamo traced them)."""
    keys = tuple(_example_key(_example(n)) if _example(n) is not None else ("node", n.name) for n in outside)
    return (type(site.module), site.needs_grad, keys)


def _describe(sub: Substitution, outside: list[fx.Node], values: list[Any]) -> str:
    """The call's tensor arguments, `float32[4, 8]`, in the forward's order."""
    by_node = dict(zip(outside, values))
    args = [sub.inputs[a.index] for a in (*sub.spec.args, *(v for _k, v in sub.spec.kwargs)) if isinstance(a, Slot)]
    tensors = [by_node[n] for n in args if isinstance(by_node.get(n), torch.Tensor)]
    return ", ".join(f"{str(t.dtype).removeprefix('torch.')}[{', '.join(map(str, t.shape))}]" for t in tensors) or "-"
