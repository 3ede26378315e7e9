"""transformers models as they come: one mapping for every family, and the layers worth a kernel.

Since 5.25 transformers marks layers through the `kernels` package in 187 model families —
"RMSNorm", the activations ("SiLU", "GeLU", "GeluTanh", "NewGELU", "FastGELU", "QuickGELU") and
the function "rotary_pos_emb" — and kernel_fx treats those marks as its own. `transformers_mapping()`
maps each of those names to the kernel repository bundled with kernel_fx, so any such model gets
kernels from `kernelize(model)` or `torch.compile(model, backend="hubkernels")` with no marking call.

Where the speed is, transformers marks nothing; `prepare(model)` marks it, for this process:
- the gated MLP (`down_proj(act(gate_proj(x)) * up_proj(x))` with SiLU), recognised by structure
  whatever the class is called, as "GatedMLP" (one fused gating kernel);
- Gemma's norm, which scales by (1 + weight) and so is not interchangeable with Llama's, as
  "GemmaRMSNorm";
- attention, through transformers' attention interface: it registers the implementation
  "kernel_fx" and selects it, so every family's attention layer calls an `AttentionCore` module
  (marked "AttentionCore") — one kernel for Llama, Mistral, Qwen, Mixtral, Phi3, ...
Whatever it cannot cover it says, in `Prepared.notes` (e.g. MoE experts, softcapped attention).

>>> import torch, kernel_fx
>>> from transformers import Qwen2Config, Qwen2ForCausalLM
>>> config = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
...                      num_key_value_heads=2, vocab_size=128)
>>> model = Qwen2ForCausalLM(config)
>>> prepared = prepare(model)
>>> prepared.marked
['AttentionCore: 1 module', 'GatedMLP: Qwen2MLP']
>>> with kernel_fx.use_kernel_mapping(transformers_mapping()):
...     model = kernel_fx.kernelize(model, device="cpu")
>>> sorted({d.layer_name for d in kernel_fx.report(model).decisions if d.uses_kernel})
['AttentionCore', 'GatedMLP', 'RMSNorm', 'rotary_pos_emb']
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from ..layers import layer_name_of, mark_hub_classes, replace_kernel_forward_from_hub, use_kernel_forward_from_hub
from ..repos import LocalLayerRepository

if TYPE_CHECKING:
    import torch

# layer name (transformers' marks, then this integration's) -> the bundled kernel layer for it
TRANSFORMERS_KERNELS = {
    "RMSNorm": "RMSNorm",
    "SiLU": "SiLU",
    "GeLU": "GeLU",
    "GeluTanh": "GeluTanh",
    "NewGELU": "NewGELU",
    "FastGELU": "FastGELU",
    "QuickGELU": "QuickGELU",
    "rotary_pos_emb": "RotaryPosEmb",
    "GemmaRMSNorm": "GemmaRMSNorm",
    "GatedMLP": "LlamaMLP",
    "AttentionCore": "AttentionCore",
}
ATTN_IMPLEMENTATION = "kernel_fx"
_DEVICES = ("cpu", "cuda")
_GEMMA_NORM = re.compile(r"^Gemma\d*[A-Za-z]*RMSNorm$")


def transformers_mapping() -> dict[str, dict[str, LocalLayerRepository]]:
    """`{layer: {"cpu": repo, "cuda": repo}}` with the bundled kernels for every name above.

    >>> mapping = transformers_mapping()
    >>> mapping["rotary_pos_emb"]["cuda"].layer_name, len(mapping)
    ('RotaryPosEmb', 11)
    """
    from ..kernels import bundled_repo_path

    root = bundled_repo_path()
    return {layer: {device: LocalLayerRepository(root, layer_name=kernel) for device in _DEVICES}
            for layer, kernel in TRANSFORMERS_KERNELS.items()}


@dataclass
class Prepared:
    """What `prepare` marked (layer name: classes or modules) and what it left, with why."""

    marked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join([*(f"marked {m}" for m in self.marked), *(f"not covered: {n}" for n in self.notes)])


def prepare(model: nn.Module) -> Prepared:
    """Mark `model`'s gated MLPs and Gemma norms, and route its attention through kernel_fx.

    Idempotent. Marks classes (for this process) and attaches one `AttentionCore` per attention
    layer; until `kernelize` or hubkernels runs, the model computes exactly as before.
    """
    prepared = Prepared()
    # transformers loads a family's classes when its first model is built, maybe after kernel_fx's backend
    # (which marks the classes loaded before it): mark them now, or a string backend's first trace of this
    # model would miss the exact call boundaries of transformers' own marks
    mark_hub_classes()
    mlps = _mark_classes(model, "GatedMLP", _is_gated_silu_mlp, prepared.notes)
    norms = _mark_classes(model, "GemmaRMSNorm", _is_gemma_norm, prepared.notes)
    attention = _route_attention(model, prepared.notes)
    if attention:
        prepared.marked.append(f"AttentionCore: {attention} module{'s' if attention != 1 else ''}")
    prepared.marked += [f"GatedMLP: {', '.join(mlps)}"] if mlps else []
    prepared.marked += [f"GemmaRMSNorm: {', '.join(norms)}"] if norms else []
    experts = sorted({type(m).__name__ for m in model.modules() if _is_moe_experts(m)})
    if experts:
        prepared.notes.append(f"MoE experts ({', '.join(experts)}): transformers runs them through its own "
                              "use_experts_implementation; kernel_fx has no experts kernel yet")
    return prepared


# -- structure -------------------------------------------------------------------------------------


def _mark_classes(model: nn.Module, layer_name: str, matches: Any, notes: list[str]) -> list[str]:
    """Mark the classes of `model`'s modules that `matches` (every instance of the class must)."""
    by_class: dict[type, bool] = {}
    for module in model.modules():
        cls = type(module)
        by_class[cls] = by_class.get(cls, True) and matches(module)
    marked = []
    for cls, all_match in by_class.items():
        if not all_match:
            continue
        previous = layer_name_of(cls)  # type: ignore[arg-type]
        if previous not in (None, layer_name):
            notes.append(f"{layer_name}: {cls.__name__} is already marked as {previous!r}; left as it is")
            continue
        replace_kernel_forward_from_hub(cls, layer_name)
        marked.append(cls.__name__)
    return sorted(marked)


def _is_gated_silu_mlp(module: nn.Module) -> bool:
    """gate_proj, up_proj, down_proj Linear layers and a SiLU `act_fn` (the fused kernel's function)."""
    if not all(isinstance(getattr(module, name, None), nn.Linear) for name in ("gate_proj", "up_proj", "down_proj")):
        return False
    act = getattr(module, "act_fn", None)
    return isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"


def _is_gemma_norm(module: nn.Module) -> bool:
    """A Gemma-family RMSNorm: scales by (1 + weight), which its forward spells out."""
    if not _GEMMA_NORM.match(type(module).__name__) or not hasattr(module, "eps"):
        return False
    try:
        source = inspect.getsource(inspect.unwrap(type(module).forward))
    except (OSError, TypeError):
        return False
    return "1.0 + self.weight" in source


def _is_moe_experts(module: nn.Module) -> bool:
    return type(module).__name__.endswith("Experts") and any(isinstance(p, nn.Parameter) for p in module.parameters(recurse=False))


# -- attention -------------------------------------------------------------------------------------


@use_kernel_forward_from_hub("AttentionCore")
class AttentionCore(nn.Module):
    """The attention computation of one attention layer (after projections and rotary, before the
    output projection), as transformers' SDPA implementation computes it. A kernel for
    "AttentionCore" replaces it for every family at once."""

    def __init__(self, is_causal: bool, num_key_value_groups: int) -> None:
        super().__init__()
        self.is_causal = is_causal
        self.num_key_value_groups = num_key_value_groups

    def forward(self, query, key, value, attention_mask=None, dropout=0.0, scaling=None, is_causal=None):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(self, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal)[0]


# keyword arguments the SDPA path (and so AttentionCore) does not implement: such calls go to
# transformers' own SDPA function, which handles or refuses them
_UNSUPPORTED_KWARGS = ("softcap", "position_bias", "s_aux", "sliding_window_mask")


def attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """The "kernel_fx" attention implementation: the layer's `AttentionCore`, else transformers' SDPA."""
    core = getattr(module, "kernel_fx_attention", None)
    if core is None or kwargs.get("output_attentions") or any(kwargs.get(k) is not None for k in _UNSUPPORTED_KWARGS):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    return core(query, key, value, attention_mask, dropout, scaling, is_causal), None


def causal_skipping_mask(batch_size: int, q_length: int, kv_length: int, q_offset: Any = 0, kv_offset: int = 0,
                   attention_mask: torch.Tensor | None = None, local_size: int | None = None,
                   allow_is_causal_skip: bool = True, **kwargs: Any) -> torch.Tensor | None:
    """The "kernel_fx" mask: transformers' `sdpa_mask`, but a plain causal call gets no mask under
    torch.compile too, so attention runs as one causal kernel (SDPA's `is_causal`, the bundled op).

    transformers skips the mask only where `torch.compiler.is_exporting()` is False, and dynamo up to
    torch 2.11 at least folds that call to True while compiling anything (pytorch#176499): every compiled forward
    then built a (B, 1, T, T) mask and ran masked attention — 3x slower on an H100 than the causal
    kernel eagerly. Read here is the flag itself, which dynamo guards as a value. Skipped only where
    transformers would skip eagerly without reading a tensor: no padding mask, no window, a Python offset
    (a static cache's tensor offset needs the mask), and one query or as many queries as keys.

    >>> import torch
    >>> causal_skipping_mask(2, 5, 5) is None
    True
    >>> left_padded = torch.tensor([[True] * 5, [False] + [True] * 4])
    >>> causal_skipping_mask(2, 5, 5, attention_mask=left_padded).shape
    torch.Size([2, 1, 5, 5])
    """
    import torch
    from transformers.masking_utils import sdpa_mask

    exporting = getattr(torch.compiler, "_is_exporting_flag", None)
    if exporting is None:  # a torch without the flag: ask as transformers does
        exporting = torch.compiler.is_exporting()
    causal_skip = (allow_is_causal_skip and not exporting and attention_mask is None and local_size is None
                   and not isinstance(q_offset, torch.Tensor) and (q_length == 1 or q_length == kv_length))
    if causal_skip:
        return None
    return sdpa_mask(batch_size, q_length, kv_length, q_offset, kv_offset, attention_mask=attention_mask,
                     local_size=local_size, allow_is_causal_skip=allow_is_causal_skip, **kwargs)


def register_attention() -> None:
    """Register the "kernel_fx" attention implementation, and its mask function: transformers gives
    an implementation it does not know no mask at all (padding silently ignored)."""
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, causal_skipping_mask)


def _route_attention(model: nn.Module, notes: list[str]) -> int:
    config = getattr(model, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in ("sdpa", ATTN_IMPLEMENTATION):
        notes.append(f"attention: the model uses attn_implementation={implementation!r}; kernel_fx routes 'sdpa' models only")
        return 0
    if getattr(config, "attn_logit_softcapping", None):
        notes.append("attention: logit softcapping, which the SDPA path does not implement")
        return 0
    layers = [m for m in model.modules() if hasattr(m, "num_key_value_groups") and hasattr(m, "scaling") and hasattr(m, "is_causal")]
    for layer in layers:
        if not isinstance(getattr(layer, "kernel_fx_attention", None), AttentionCore):
            layer.kernel_fx_attention = AttentionCore(bool(layer.is_causal), int(layer.num_key_value_groups))
    if not layers:
        notes.append("attention: no layer with num_key_value_groups, scaling and is_causal (not a decoder transformers knows)")
        return 0
    register_attention()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)  # type: ignore[operator]
    return len(layers)
