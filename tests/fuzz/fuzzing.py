"""Seeded random models with extensible layers, and their comparison against eager (issue 14).

`make_case(seed)` draws a model: marked layers with one to three tensor inputs passed by position
and keyword, defaults and non-tensor arguments, shared instances, a nested marked layer, layers
held in containers, tuple and dict outputs, in-place ops, views written through, buffers a kernel
writes (and buffers both write, read back into the output), dtype changes and graph breaks; a kernel flavour per layer (traced, opaque, without
backward); inference or training; `dynamic=True` or not. `run_case(case, repos)` runs it eagerly,
kernelized and compiled with `hubkernels`, and compares outputs, gradients and the kernels'
step counters against eager. A wrong output is a failure; a site that keeps its original with a
reason is fine. Used by tests/fuzz/test_fuzz.py (CI) and benchmarks/fuzz_long.py (long run).
"""

from __future__ import annotations

import copy
import random
import textwrap
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import kernel_fx
from kernel_fx import HubKernelsBackend, Outcome, use_kernel_mapping

WIDTH = 8
FLAVOURS = {  # name: (can_torch_compile, has_backward)
    "traced": (True, True),
    "opaque": (False, True),
    "traced_no_backward": (True, False),
    "opaque_no_backward": (False, False),
}

# -- marked layers ---------------------------------------------------------------------------------


@kernel_fx.use_kernel_forward_from_hub("FzScale")
class FzScale(nn.Module):
    """One input; a parameter, a buffer and a float attribute."""

    def __init__(self, factor: float = 1.5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, WIDTH))
        self.register_buffer("shift", torch.linspace(-0.2, 0.2, WIDTH))
        self.factor = factor

    def forward(self, x):
        return x * self.weight * self.factor + self.shift


@kernel_fx.use_kernel_forward_from_hub("FzMix")
class FzMix(nn.Module):
    """Two inputs, a float with a default and a flag, by keyword or position."""

    def forward(self, x, y, alpha: float = 2.0, negate: bool = False):
        out = alpha * y - x
        return -out if negate else out


@kernel_fx.use_kernel_forward_from_hub("FzAddNorm")
class FzAddNorm(nn.Module):
    """An optional second input; returns (normed, residual). Its kernel writes `residual` in place."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.8, 1.2, WIDTH))
        self.eps = 1e-5

    def forward(self, h, residual=None):
        r = h if residual is None else h + residual
        return r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight, r


@kernel_fx.use_kernel_forward_from_hub("FzGate")
class FzGate(nn.Module):
    """Three inputs; a dict output."""

    def forward(self, x, y, z):
        gate = torch.sigmoid(y)
        return {"out": x * gate + z, "gate": gate}


@kernel_fx.use_kernel_forward_from_hub("FzCast")
class FzCast(nn.Module):
    """A dtype change: float64 out of float32 in."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(-1.0, 1.0, WIDTH))

    def forward(self, x):
        return x.to(torch.float64) * self.weight.to(torch.float64)


@kernel_fx.use_kernel_forward_from_hub("FzHead")
class FzHead(nn.Module):
    """Returns a view of its input (the first half of the features)."""

    def forward(self, x):
        return x[:, : WIDTH // 2]


@kernel_fx.use_kernel_forward_from_hub("FzCounter")
class FzCounter(nn.Module):
    """tanh(x) * weight; its kernel also counts calls and keeps an average in buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, WIDTH))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("ema", torch.zeros(WIDTH))

    def forward(self, x):
        return torch.tanh(x) * self.weight


@kernel_fx.use_kernel_forward_from_hub("FzTally")
class FzTally(nn.Module):
    """Counts its calls in a buffer and adds the count to its output: the original and the kernel
    both write the buffer, and a lost or doubled write shows in the numbers (issue 19)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, WIDTH))
        self.register_buffer("tally", torch.zeros(()))

    def forward(self, x):
        self.tally.add_(1)
        return self.tally.expand_as(x) + x * self.weight


@kernel_fx.use_kernel_forward_from_hub("FzOuter")
class FzOuter(nn.Module):
    """A marked layer holding another."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = FzScale(0.5)

    def forward(self, x):
        return torch.tanh(self.inner(x)) + 1.0


LAYERS = {cls.__name__: cls for cls in (FzScale, FzMix, FzAddNorm, FzGate, FzCast, FzHead, FzCounter, FzOuter, FzTally)}

# The kernels: the same numbers, computed another way (torch functions, other order).
KERNEL_BODIES = {
    "FzScale": "return torch.add(torch.mul(x, self.weight * self.factor), self.shift)",
    "FzMix": """
        out = torch.sub(torch.mul(y, alpha), x)
        return torch.neg(out) if negate else out
    """,
    "FzAddNorm": """
        if residual is None:
            r = h
        else:
            residual.add_(h)  # the fused kernel of serving stacks writes the sum into `residual`
            r = residual
        return torch.mul(r, self.weight) * torch.rsqrt(torch.mean(r * r, dim=-1, keepdim=True) + self.eps), r
    """,
    "FzGate": """
        gate = torch.sigmoid(y)
        return {"out": torch.addcmul(z, x, gate), "gate": gate}
    """,
    "FzCast": "return torch.mul(x.double(), self.weight.double())",
    "FzHead": "return torch.narrow(x, 1, 0, x.shape[1] // 2)",
    "FzCounter": """
        self.steps.add_(1)
        self.ema.mul_(0.5).add_(x.detach().mean(0))
        return torch.mul(torch.tanh(x), self.weight)
    """,
    "FzTally": """
        self.tally.add_(1)
        return torch.addcmul(self.tally.expand_as(x), x, self.weight)  # no meta for symbolic sizes: opaque under dynamic
    """,
    "FzOuter": "return torch.add(torch.tanh(torch.mul(x, self.inner.weight * self.inner.factor) + self.inner.shift), 1.0)",
}
SIGNATURES = {
    "FzScale": "x", "FzMix": "x, y, alpha: float = 2.0, negate: bool = False", "FzAddNorm": "h, residual=None",
    "FzGate": "x, y, z", "FzCast": "x", "FzHead": "x", "FzCounter": "x", "FzOuter": "x", "FzTally": "x",
}


def kernel_source(layer: str, flavour: str) -> str:
    can_compile, has_backward = FLAVOURS[flavour]
    body = textwrap.indent(textwrap.dedent(KERNEL_BODIES[layer]).strip(), " " * 8)
    return (f"import torch\nfrom torch import nn\n\n\nclass {layer}(nn.Module):\n"
            f"    can_torch_compile = {can_compile}\n    has_backward = {has_backward}\n\n"
            f"    def forward(self, {SIGNATURES[layer]}):\n{body}\n")


def build_repos(root: Path) -> dict[tuple[str, str], Any]:
    """A local kernel repository per (layer, flavour), in the Hub layout, under `root`."""
    import json

    repos = {}
    for layer in LAYERS:
        for flavour in FLAVOURS:
            variant = root / f"{layer}_{flavour}" / "build" / "torch-cpu"
            variant.mkdir(parents=True, exist_ok=True)
            (variant / "layers.py").write_text(kernel_source(layer, flavour))
            (variant / "__init__.py").write_text("from . import layers\n")
            meta = {"id": f"fuzz_{layer.lower()}_{flavour}_{abs(hash(str(root))) % 10**8}", "name": layer, "version": 1, "backend": {"type": "cpu"}}
            (variant / "metadata.json").write_text(json.dumps(meta))
            repos[layer, flavour] = kernel_fx.LocalLayerRepository(variant.parent.parent, layer_name=layer)
    return repos


# -- models ----------------------------------------------------------------------------------------


class FuzzModel(nn.Module):
    """Runs a plan of steps over a list of (B, WIDTH) float32 tensors that starts as the inputs."""

    def __init__(self, plan: tuple, layers: dict[str, nn.Module], container: str, output: str) -> None:
        super().__init__()
        self.plan, self.container, self.output = plan, container, output
        self.keys = tuple(layers)
        if container == "list":
            self.layers = nn.ModuleList(layers.values())
        elif container == "dict":
            self.layers = nn.ModuleDict(layers)
        else:
            for key, layer in layers.items():
                setattr(self, key, layer)

    def layer(self, key: str) -> nn.Module:
        if self.container == "list":
            return self.layers[self.keys.index(key)]
        if self.container == "dict":
            return self.layers[key]
        return getattr(self, key)

    def forward(self, x, y):
        state = [x, y]
        for step in self.plan:
            kind = step[0]
            if kind == "call":
                self._call(state, *step[1:])
            elif kind == "inplace":
                t = state[step[1]] * 1.0
                t.mul_(0.9).add_(0.1)
                state.append(t)
            elif kind == "view":
                t = state[step[1]]
                state.append(t.reshape(-1).view(t.shape).t().contiguous().t())
            elif kind == "mix":
                state.append(torch.sin(state[step[1]]) + 0.5 * state[step[2]])
            elif kind == "break":
                torch._dynamo.graph_break()
        last = state[-3:]
        if self.output == "tuple":
            return tuple(last)
        if self.output == "dict":
            return {f"o{i}": t for i, t in enumerate(last)}
        return sum(last)

    def _call(self, state: list, key: str, family: str, picks: tuple, keyword: bool, extra: tuple) -> None:
        layer = self.layer(key)
        ins = [state[i] for i in picks]
        kwargs = dict(extra)
        if family == "FzMix":
            out = layer(ins[0], y=ins[1], **kwargs) if keyword else layer(ins[0], ins[1], *kwargs.values())
            state.append(out)
        elif family == "FzAddNorm":
            if len(ins) == 1:
                out, r = layer(ins[0])
            else:
                residual = ins[1] * 1.0  # a fresh value: the kernel may write it
                out, r = layer(ins[0], residual=residual) if keyword else layer(ins[0], residual)
            state.extend([out, r])
        elif family == "FzGate":
            got = layer(ins[0], ins[1], z=ins[2]) if keyword else layer(*ins)
            state.extend([got["out"], got["gate"]])
        elif family == "FzCast":
            state.append(layer(ins[0]).to(torch.float32))
        elif family == "FzHead":
            base = ins[0] * 1.0
            head = layer(base)
            if kwargs.get("write"):
                head.mul_(1.5)  # written through the view: `base` changes too
            state.append(torch.cat([head, head], dim=1) + base)
        else:
            state.append(layer(x=ins[0]) if keyword else layer(ins[0]))


ARITY = {"FzScale": 1, "FzMix": 2, "FzAddNorm": 2, "FzGate": 3, "FzCast": 1, "FzHead": 1, "FzCounter": 1, "FzOuter": 1, "FzTally": 1}


@dataclass
class Case:
    seed: int
    plan: tuple
    families: dict[str, str]  # layer key -> family
    flavours: dict[str, str]  # family -> kernel flavour
    container: str
    output: str
    training: bool
    dynamic: bool
    inners: tuple[str, ...]
    batch: int

    def model(self) -> FuzzModel:
        torch.manual_seed(self.seed)
        layers = {key: LAYERS[family]() for key, family in self.families.items()}
        return FuzzModel(self.plan, layers, self.container, self.output)


def make_case(seed: int, inductor: bool = False) -> Case:
    rng = random.Random(seed)
    families: dict[str, str] = {}
    plan: list[tuple] = []
    width = 2  # tensors in the state
    for _ in range(rng.randint(2, 7)):
        roll = rng.random()
        if roll < 0.6:
            if families and rng.random() < 0.3:  # a shared instance, called again
                key = rng.choice(list(families))
                family = families[key]
            else:
                family = rng.choice(list(LAYERS))
                key = f"l{len(families)}"
                families[key] = family
            arity = ARITY[family]
            if family == "FzAddNorm":
                arity = rng.choice([1, 2])
            picks = tuple(rng.randrange(width) for _ in range(arity))
            extra: tuple = ()
            if family == "FzMix":
                extra = tuple(rng.sample([("alpha", rng.choice([0.5, 2.0, -1.25])), ("negate", rng.random() < 0.5)], rng.randint(0, 2)))
                extra = tuple(sorted(extra))  # positional order when passed by position: alpha, negate
                if extra and extra[0][0] == "negate":  # negate alone cannot be positional before alpha
                    extra = (("alpha", 2.0), *extra)
            if family == "FzHead":
                extra = (("write", rng.random() < 0.5),)
            plan.append(("call", key, family, picks, rng.random() < 0.5, extra))
            width += {"FzAddNorm": 2, "FzGate": 2}.get(family, 1)
        elif roll < 0.72:
            plan.append(("inplace", rng.randrange(width)))
            width += 1
        elif roll < 0.82:
            plan.append(("view", rng.randrange(width)))
            width += 1
        elif roll < 0.92:
            plan.append(("mix", rng.randrange(width), rng.randrange(width)))
            width += 1
        else:
            plan.append(("break",))
    if not families:
        plan.append(("call", "l0", "FzScale", (0,), False, ()))
        families["l0"] = "FzScale"
    flavours = {family: rng.choice(list(FLAVOURS)) for family in sorted(set(families.values()))}  # sorted: not by hash seed
    inners = ("inductor",) if inductor else tuple(rng.sample(["eager", "aot_eager"], rng.randint(1, 2)))
    return Case(seed, tuple(plan), families, flavours, rng.choice(["attrs", "list", "dict"]), rng.choice(["tensor", "tuple", "dict"]),
                training=rng.random() < 0.5, dynamic=rng.random() < 0.3, inners=inners, batch=rng.randint(2, 5))


# -- running ---------------------------------------------------------------------------------------


@dataclass
class Result:
    seed: int
    runs: int = 0
    substituted: Counter = field(default_factory=Counter)  # outcome -> sites
    skipped: Counter = field(default_factory=Counter)  # reason -> sites
    wrong: list[str] = field(default_factory=list)  # wrong outputs, gradients or counters
    upstream: list[str] = field(default_factory=list)  # wrong the same way with the inner backend alone (no kernel_fx)
    crashed: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.wrong or self.crashed)


def _flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return list(out.values())
    return list(out)


def _inputs(case: Case, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(case.seed * 7 + batch)
    return tuple(torch.randn(batch, WIDTH, generator=gen).requires_grad_(case.training) for _ in range(2))  # type: ignore[return-value]


def _step(model: nn.Module, inputs: tuple, training: bool) -> dict[str, Any]:
    """Outputs, input and parameter gradients, and step counters of one call."""
    ins = [t.detach().clone().requires_grad_(training) for t in inputs]
    outs = _flat(model(*ins))
    got: dict[str, Any] = {f"out{i}": o.detach() for i, o in enumerate(outs)}
    if training:
        sum(o.float().square().mean() for o in outs).backward()
        got.update({f"grad_in{i}": t.grad for i, t in enumerate(ins) if t.grad is not None})
        got.update({f"grad_{n.removeprefix('_orig_mod.')}": p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
        model.zero_grad(set_to_none=True)
    return got


def _compare(label: str, want: dict[str, Any], got: dict[str, Any], result: Result) -> None:
    for key, expected in want.items():
        value = got.get(key)
        if value is None:
            if not key.startswith("grad_") or float(expected.abs().max()) > 0:
                result.wrong.append(f"{label}: {key} missing")
            continue
        try:
            torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-4)
        except AssertionError as exc:
            result.wrong.append(f"{label}: {key}: {str(exc).splitlines()[-1] if str(exc) else exc}")


def _counters(model: nn.Module) -> dict[str, int]:
    return {name: int(b) for name, b in model.named_buffers() if name.endswith("steps")}


def run_case(case: Case, repos: dict[tuple[str, str], Any]) -> Result:
    """Eager, kernelized and compiled runs of `case`, compared with eager."""
    result = Result(case.seed)
    mapping = {family: {"cpu": repos[family, flavour]} for family, flavour in case.flavours.items()}
    pristine = case.model().train(case.training)
    reference = copy.deepcopy(pristine)  # every run starts from the same buffers (FzTally counts calls)
    batches = [case.batch, case.batch + 2] if case.dynamic else [case.batch]
    want = [_step(reference, _inputs(case, b), case.training) for b in batches]
    with use_kernel_mapping(mapping):
        counted: dict[str, int] = {}
        runs: list[tuple[str, Any]] = [("kernelize", None), *((inner, inner) for inner in case.inners)]
        for label, inner in runs:
            model = copy.deepcopy(pristine)
            try:
                if inner is None:
                    run = kernel_fx.kernelize(model, device="cpu")
                    backend = None
                else:
                    torch._dynamo.reset()
                    backend = HubKernelsBackend(inner=inner)
                    run = torch.compile(model, backend=backend, dynamic=case.dynamic or None)
                found = Result(case.seed)
                for b, expected in zip(batches, want):
                    _compare(f"{label} batch {b}", expected, _step(run, _inputs(case, b), case.training), found)
                if found.wrong and inner is not None:
                    upstream = set(plain_wrong(case, pristine, inner, batches, want))
                    result.upstream += [w for w in found.wrong if w in upstream]
                    found.wrong = [w for w in found.wrong if w not in upstream]
                result.wrong += found.wrong
                if backend is None:
                    counted = _counters(model)
                else:
                    _count(backend, result)
                    _check_counters(label, counted, _counters(model), result)
                result.runs += 1
            except Exception as exc:  # noqa: BLE001 - a crash is a failure of its own, with its trace
                result.crashed.append(f"{label}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}\n"
                                      + "".join(traceback.format_exception(exc)[-6:]))
    return result


def plain_wrong(case: Case, pristine: nn.Module, inner: str, batches: list[int], want: list[dict[str, Any]]) -> list[str]:
    """The comparisons that fail with torch.compile(backend=inner) alone — no kernel_fx backend, no
    kernels: a wrong value there is torch's (e.g. aot_eager's gradients with a buffer written and
    read back through a view), reported apart from kernel_fx's own."""
    torch._dynamo.reset()
    model = copy.deepcopy(pristine)
    run = torch.compile(model, backend=inner, dynamic=case.dynamic or None)
    found = Result(case.seed)
    try:
        for b, expected in zip(batches, want):
            _compare(f"{inner} batch {b}", expected, _step(run, _inputs(case, b), case.training), found)
    except Exception:  # noqa: BLE001 - the plain run crashing says nothing about kernel_fx's values
        return []
    return found.wrong


def _count(backend: HubKernelsBackend, result: Result) -> None:
    for decision in backend.report.decisions:
        if decision.outcome is Outcome.ORIGINAL:
            result.skipped[decision.rejected.reason.value if decision.rejected else "?"] += 1
        else:
            result.substituted[decision.outcome.value] += 1


def _check_counters(label: str, eager: dict[str, int], compiled: dict[str, int], result: Result) -> None:
    """A kernel's step counter moves as in the kernelized run (the kernel ran once per call), or
    not at all (the original ran): never twice per call (a backward re-running the forward)."""
    for name, count in compiled.items():
        if count not in (0, eager[name]):
            result.wrong.append(f"{label}: {name} is {count}, kernelized {eager[name]}")
