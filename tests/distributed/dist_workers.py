"""Two CPU ranks (gloo) for the distributed tests: `spawn(setup, **options)` runs one setup on both
ranks and returns what each rank measured; `reference(...)` is the same model in one process,
not kernelized, for the numbers to match.

A setup builds the demo model (or a tiny transformers Llama) with fixed weights, wraps it (DDP,
FSDP2, tensor parallel, checkpointing), runs its cases (eager `kernelize`, `hubkernels` with
options) and returns per case: the loss averaged over ranks, every parameter's full gradient
(sharded ones gathered), and the sites with their outcome and reason. Each case starts from the
same weights, so every case compares with one reference.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

WORLD = 2
# Big enough for DDPOptimizer to cut the graph into gradient buckets of 1 MB (5 MB of float32 weights).
DEMO = {"vocab_size": 256, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
LLAMA = {"vocab_size": 256, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2}
BATCH, SEQ = 4, 8
DEMO_SITES = [f"layers.{i}.{name}" for i in range(2)
              for name in ("input_layernorm", "self_attn.rotary", "self_attn.attn", "post_attention_layernorm", "mlp.act")] + ["norm"]


# -- models, data, loss ---------------------------------------------------------------------------


def build(kind: str) -> nn.Module:
    """The model in train mode with fixed weights: "demo" or "llama" (transformers, marked)."""
    if kind == "demo":
        from kernel_fx.demo import DemoConfig, build_demo_model

        return build_demo_model(DemoConfig(**DEMO), seed=3).train()
    from transformers import LlamaConfig, LlamaForCausalLM

    from kernel_fx.integrations import mark_llama

    mark_llama()
    torch.manual_seed(3)
    return LlamaForCausalLM(LlamaConfig(**LLAMA, attn_implementation="eager")).train()


def mapping(kind: str, repo: str | None = None) -> dict:
    """The bundled kernels for the model; `repo` overrides RMSNorm and AddRMSNorm with its kernels."""
    import kernel_fx
    from kernel_fx.defaults import default_mapping
    from kernel_fx.integrations import llama_mapping

    result = default_mapping() if kind == "demo" else llama_mapping()
    if repo is not None:
        for name in ("RMSNorm", "AddRMSNorm"):
            result[name] = {"cpu": kernel_fx.LocalLayerRepository(repo, layer_name=name)}
    return result


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    ids = torch.randint(0, DEMO["vocab_size"], (BATCH, SEQ), generator=generator)
    return ids, torch.randint(0, DEMO["vocab_size"], (BATCH, SEQ), generator=generator)


def loss_of(model: Callable[..., Any], ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    logits = getattr(out, "logits", out)
    if hasattr(logits, "full_tensor"):
        logits = logits.full_tensor()
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def reference(kind: str) -> dict[str, Any]:
    """Loss and gradients of the whole batch in one process, nothing kernelized."""
    model = build(kind)
    loss = loss_of(model, *data())
    loss.backward()
    return {"loss": loss.detach(), "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters()}}


# -- spawning -------------------------------------------------------------------------------------


def spawn(setup: str, **options: Any) -> list[dict[str, Any]]:
    """Run `SETUPS[setup](rank, **options)` on 2 gloo ranks; return rank 0's cases (a list of dicts)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_rank_main, args=(_free_port(), setup, options, tmp), nprocs=WORLD, start_method="spawn")
        return torch.load(Path(tmp) / "rank0.pt", weights_only=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, setup: str, options: dict[str, Any], out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        cases = SETUPS[setup](rank, **options)
    finally:
        dist.destroy_process_group()
    torch.save(cases, Path(out_dir) / f"rank{rank}.pt")


# -- one case -------------------------------------------------------------------------------------


def _case(name: str, model: nn.Module, run: Callable[..., Any], ids: torch.Tensor, targets: torch.Tensor,
          report: Callable[[], Any], prefix: str = "") -> dict[str, Any]:
    """Forward, backward; the rank-averaged loss, full gradients (names without `prefix`), the sites."""
    loss = loss_of(run, ids, targets)
    loss.backward()
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    grads = {}
    for n, p in model.named_parameters():
        grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        grads[n.removeprefix(prefix).replace("._checkpoint_wrapped_module", "")] = grad.detach().clone()
    decisions = [(d.path.removeprefix(prefix), d.outcome.value, d.rejected.reason.value if d.rejected else None,
                  d.rejected.detail if d.rejected else None) for d in report().decisions]
    from kernel_fx.dtensor import fallbacks

    eager_fallbacks = {p.removeprefix(prefix): str(r) for p, r in fallbacks(model).items()}
    return {"case": name, "loss": mean / WORLD, "grads": grads, "decisions": decisions, "fallbacks": eager_fallbacks}


def _compiled(model: nn.Module, **options: Any) -> tuple[Callable[..., Any], Callable[[], Any]]:
    import kernel_fx

    backend = kernel_fx.HubKernelsBackend(inner="aot_eager", **options)
    return torch.compile(model, backend=backend), lambda: backend.report


def _rows(rank: int) -> slice:
    per = BATCH // WORLD
    return slice(rank * per, (rank + 1) * per)


# -- setups ---------------------------------------------------------------------------------------


def ddp(rank: int, kind: str = "demo", cases: tuple[str, ...] = ("eager", "ddp_optimizer", "no_ddp_optimizer")) -> list[dict]:
    """DDP (bucket_cap_mb=1): eager kernelize before wrapping; hubkernels with DDPOptimizer on and off."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    import kernel_fx

    ids, targets = (t[_rows(rank)] for t in data())
    results = []
    for case in cases:
        torch._dynamo.reset()
        model = build(kind)
        with kernel_fx.use_kernel_mapping(mapping(kind)):
            if case == "eager":
                model = kernel_fx.kernelize(model, device="cpu")
                wrapped = DDP(model, bucket_cap_mb=1)
                results.append(_case(case, wrapped, wrapped, ids, targets, lambda m=model: kernel_fx.report(m), prefix="module."))
                continue
            torch._dynamo.config.optimize_ddp = case == "ddp_optimizer"
            wrapped = DDP(model, bucket_cap_mb=1)
            run, report = _compiled(wrapped)
            results.append(_case(case, wrapped, run, ids, targets, report, prefix="module."))
            torch._dynamo.config.optimize_ddp = True
    return results


def fsdp(rank: int) -> list[dict]:
    """FSDP2 (`fully_shard` per layer and root): eager kernelize after sharding; hubkernels per layer
    (`layer.compile`, the layers share a graph) and on the whole model."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import kernel_fx

    mesh = init_device_mesh("cpu", (WORLD,))
    ids, targets = (t[_rows(rank)] for t in data())
    results = []
    for case in ("eager", "per_layer", "whole"):
        torch._dynamo.reset()
        model = build("demo")
        backend = kernel_fx.HubKernelsBackend(inner="aot_eager")
        for layer in model.layers:
            fully_shard(layer, mesh=mesh)
            if case == "per_layer":
                layer.compile(backend=backend)
        fully_shard(model, mesh=mesh)
        with kernel_fx.use_kernel_mapping(mapping("demo")):
            if case == "eager":
                model = kernel_fx.kernelize(model, device="cpu")
                results.append(_case(case, model, model, ids, targets, lambda m=model: kernel_fx.report(m)))
            else:
                run = torch.compile(model, backend=backend) if case == "whole" else model
                results.append(_case(case, model, run, ids, targets, lambda b=backend: b.report))
    return results


def tensor_parallel(rank: int, repo: str | None = None) -> list[dict]:
    """Tensor parallel with a sequence-parallel residual stream: q/k/v and gate_up column-wise,
    o and down row-wise (outputs Shard(1) DTensors), norms on Shard(1) DTensors with replicated
    weights. Both ranks see the whole batch. Eager kernelize, then hubkernels."""
    import kernel_fx

    ids, targets = data()
    results = []
    for case in ("eager", "hubkernels"):
        torch._dynamo.reset()
        model = _parallelize(build("demo"))
        with kernel_fx.use_kernel_mapping(mapping("demo", repo)):
            if case == "eager":
                model = kernel_fx.kernelize(model, device="cpu")
                results.append(_unshuffle(_case(case, model, model, ids, targets, lambda m=model: kernel_fx.report(m))))
            else:
                run, report = _compiled(model)
                results.append(_unshuffle(_case(case, model, run, ids, targets, report)))
    return results


def _parallelize(model: nn.Module) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel, parallelize_module

    mesh = init_device_mesh("cpu", (WORLD,))
    with torch.no_grad():
        for layer in model.layers:  # each rank's column shard of the fused gate_up must hold its gate AND up rows
            layer.mlp.gate_up_proj.weight.copy_(layer.mlp.gate_up_proj.weight[_gate_up_order()])
    plan: dict[str, Any] = {
        "embed_tokens": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1), use_local_output=False),
        "norm": SequenceParallel(),
        "lm_head": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()),
    }
    for i, layer in enumerate(model.layers):
        p = f"layers.{i}."
        plan[p + "input_layernorm"] = SequenceParallel()
        for proj in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_up_proj"):
            plan[p + proj] = ColwiseParallel(input_layouts=Shard(1))
        for proj in ("self_attn.o_proj", "mlp.down_proj"):
            plan[p + proj] = RowwiseParallel(output_layouts=Shard(1), use_local_output=False)
        layer.self_attn.num_heads //= WORLD  # heads per rank after the column-wise split
    parallelize_module(model, mesh, plan)
    for layer in model.layers:  # SequenceParallel takes one input: AddRMSNorm gets its replicated weight by hand
        norm = layer.post_attention_layernorm
        norm.weight = nn.Parameter(distribute_tensor(norm.weight.detach(), mesh, [Replicate()]))
    return model


def _gate_up_order() -> torch.Tensor:
    """Rows of the fused gate_up weight as [gate_0, up_0, gate_1, up_1] (rank r's column shard r)."""
    inter, part = DEMO["intermediate_size"], DEMO["intermediate_size"] // WORLD
    return torch.cat([torch.arange(r * part, (r + 1) * part) + half for r in range(WORLD) for half in (0, inter)])


def _unshuffle(case: dict) -> dict:
    """Gradients of the fused gate_up weights back in the unsharded model's row order."""
    order = _gate_up_order()
    for name, grad in case["grads"].items():
        if name.endswith("gate_up_proj.weight"):
            restored = torch.empty_like(grad)
            restored[order] = grad
            case["grads"][name] = restored
    return case


def checkpointed(rank: int) -> list[dict]:
    """Each decoder layer under (non-reentrant) activation checkpointing, in DDP: eager kernelize, hubkernels."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing
    from torch.nn.parallel import DistributedDataParallel as DDP

    import kernel_fx
    from kernel_fx.demo.model import DecoderLayer

    ids, targets = (t[_rows(rank)] for t in data())
    results = []
    for case in ("eager", "hubkernels"):
        torch._dynamo.reset()
        model = build("demo")
        with kernel_fx.use_kernel_mapping(mapping("demo")):
            if case == "eager":
                model = kernel_fx.kernelize(model, device="cpu")
            apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, DecoderLayer))
            wrapped = DDP(model, bucket_cap_mb=1)
            if case == "eager":
                results.append(_case(case, wrapped, wrapped, ids, targets, lambda m=model: kernel_fx.report(m), prefix="module."))
            else:
                run, report = _compiled(wrapped)
                results.append(_case(case, wrapped, run, ids, targets, report, prefix="module."))
    return results


# -- kernels for tensor parallel ---------------------------------------------------------------------

# RMSNorm and AddRMSNorm as Hub kernels are built: `torch.library` custom ops (no DTensor sharding
# strategy), with a fake and an autograd formula. DTENSOR is replaced by the class attribute under test.
CUSTOM_OP_KERNELS = """
import torch
from torch import nn
from torch.nn import functional as F


def _norm(x, weight, eps):
    return weight * F.rms_norm(x.float(), x.shape[-1:], eps=eps).to(x.dtype)


@torch.library.custom_op("hdist::rms_norm", mutates_args=())
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _norm(x, weight, eps)


@rms_norm.register_fake
def _(x, weight, eps):
    return torch.empty_like(x)


def _setup(ctx, inputs, output):
    x, weight, eps = inputs
    ctx.eps = eps
    ctx.save_for_backward(x, weight)


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    with torch.enable_grad():
        x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
        grad_x, grad_weight = torch.autograd.grad(_norm(x, weight, ctx.eps), (x, weight), grad)
    return grad_x, grad_weight, None


rms_norm.register_autograd(_backward, setup_context=_setup)


class RMSNorm(nn.Module):
    has_backward = True
    can_torch_compile = True
    DTENSOR

    def forward(self, hidden_states):
        return torch.ops.hdist.rms_norm(hidden_states, self.weight, self.variance_epsilon)


class AddRMSNorm(nn.Module):
    has_backward = True
    can_torch_compile = True
    DTENSOR

    def forward(self, hidden_states, residual):
        residual = residual + hidden_states
        return torch.ops.hdist.rms_norm(residual, self.weight, self.variance_epsilon), residual
"""


def kernel_files(kind: str, dtensor: str | None) -> dict[str, str]:
    """The files of a test kernel repo's variant: "custom_op" (above) or "plain" (the bundled CPU
    kernels, plain torch), with `dtensor = ...` on RMSNorm and AddRMSNorm (nothing when None)."""
    line = f"dtensor = {dtensor!r}" if dtensor else "pass"
    if kind == "custom_op":
        return {"layers.py": CUSTOM_OP_KERNELS.replace("DTENSOR", line)}
    from kernel_fx.kernels import bundled_repo_path

    variant = bundled_repo_path() / "build" / "torch-cpu"
    files = {f.name: f.read_text() for f in variant.glob("*.py")}
    source = files["layers.py"]
    for name in ("RMSNorm", "AddRMSNorm"):
        head = f"class {name}(nn.Module):\n"
        start = source.index(head)
        at = source.index("    can_torch_compile = True\n", start) + len("    can_torch_compile = True\n")
        source = source[:at] + f"    {line}\n" + source[at:]
    return {**files, "layers.py": source}


SETUPS: dict[str, Callable[..., list[dict]]] = {"ddp": ddp, "fsdp": fsdp, "tensor_parallel": tensor_parallel, "checkpointed": checkpointed}
