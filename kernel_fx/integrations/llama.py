"""transformers' Llama with the bundled kernels: mark its RMSNorm, attention and MLP, map them to kernels.

transformers marks `LlamaRMSNorm` itself only when the Hugging Face `kernels` package is
installed, and never marks `LlamaMLP`; `mark_llama` marks both, for this process.

>>> import torch
>>> import kernel_fx
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> mark_llama()
>>> config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
...                      num_key_value_heads=2, vocab_size=128)
>>> model = LlamaForCausalLM(config)
>>> with kernel_fx.use_kernel_mapping(llama_mapping()):
...     model = kernel_fx.kernelize(model, device="cpu")
>>> report = kernel_fx.report(model)   # two norms, the attention and the MLP of the layer, and the final norm
>>> sorted(d.path for d in report.decisions if d.uses_kernel)
['model.layers.0.input_layernorm', 'model.layers.0.mlp', 'model.layers.0.post_attention_layernorm', 'model.layers.0.self_attn', 'model.norm']
>>> model(torch.tensor([[1, 2, 3]])).logits.shape
torch.Size([1, 3, 128])
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

from ..layers import layer_name_of, replace_kernel_forward_from_hub
from ..repos import LocalLayerRepository

logger = logging.getLogger(__name__)

# transformers class -> the layer name it is marked with (and the bundled kernel layer of that name).
LLAMA_LAYERS = {"LlamaRMSNorm": "RMSNorm", "LlamaMLP": "LlamaMLP", "LlamaAttention": "LlamaAttention"}
_DEVICES = ("cpu", "cuda")


def mark_llama() -> None:
    """Mark transformers' `LlamaRMSNorm` as "RMSNorm" and `LlamaMLP` as "LlamaMLP"; safe to repeat.

    Marking is per class and lasts for the process; models built before the call are covered too.
    Until `kernelize` runs, the marked classes compute exactly as before.

    >>> from transformers.models.llama import modeling_llama
    >>> mark_llama(); mark_llama()
    >>> modeling_llama.LlamaMLP.kernel_layer_name
    'LlamaMLP'
    """
    modeling = _modeling_llama()
    for class_name, layer_name in LLAMA_LAYERS.items():
        cls = getattr(modeling, class_name)
        previous = layer_name_of(cls)  # type: ignore[arg-type]
        if previous not in (None, layer_name):
            logger.info("Re-marking %s from layer %r to %r.", cls.__qualname__, previous, layer_name)
        replace_kernel_forward_from_hub(cls, layer_name)


def llama_mapping() -> dict[str, dict[str, LocalLayerRepository]]:
    """`{layer: {"cpu": repo, "cuda": repo}}` with the bundled kernels for the layers `mark_llama` marks.

    Use it with `kernel_fx.use_kernel_mapping(llama_mapping())` around `kernel_fx.kernelize`, or
    register it. It does not import transformers; the attention kernel is picked to match the
    transformers already imported (`mark_llama()` imports it), the one for 5.17 otherwise.

    >>> mapping = llama_mapping()
    >>> sorted(mapping), mapping["LlamaMLP"]["cuda"].layer_name
    (['LlamaAttention', 'LlamaMLP', 'RMSNorm'], 'LlamaMLP')
    """
    from ..kernels import bundled_repo_path

    root = bundled_repo_path()
    kernels = {name: name for name in LLAMA_LAYERS.values()}
    kernels["LlamaAttention"] = _attention_kernel_name()
    return {
        layer_name: {device: LocalLayerRepository(root, layer_name=kernel) for device in _DEVICES}
        for layer_name, kernel in kernels.items()
    }


def _attention_kernel_name() -> str:
    """The bundled attention kernel whose forward matches the installed transformers' LlamaAttention.

    transformers 5.24 renamed the forward's `past_key_values` to `cache`; kernel forwards must
    match the original's parameter names, so there is one kernel per spelling.
    """
    modeling = sys.modules.get("transformers.models.llama.modeling_llama")
    if modeling is None:
        return "LlamaAttention"
    names = inspect.signature(inspect.unwrap(modeling.LlamaAttention.forward)).parameters
    return "LlamaAttentionCacheArg" if "cache" in names else "LlamaAttention"


CAUSAL_SKIP_IMPLEMENTATION = "kernel_fx_sdpa"


def skip_causal_mask_when_compiling(model: nn.Module) -> None:
    """Let a transformers Llama keep `is_causal` SDPA under torch.compile, for unpacked inputs.

    In eager, transformers passes SDPA no mask for causal, unpadded inputs. While dynamo traces it
    cannot check the data, so it assumes `position_ids` might describe packed sequences and
    always builds a full (B, 1, T, T) mask: attention under torch.compile then takes a masked,
    slower SDPA path (and the bundled LlamaAttention kernel its masked branch). Calling this is a
    promise that inputs are not packed sequences (no `position_ids` restarting inside a row):
    it registers an attention implementation that is transformers' own SDPA attention with a
    mask function returning None for a causal mask with no padding mask, no offset and no
    sliding window (all known while tracing), and transformers' `sdpa_mask` for anything else.

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
    ...                      num_key_value_heads=2, vocab_size=128)
    >>> model = LlamaForCausalLM(config)
    >>> skip_causal_mask_when_compiling(model)
    >>> model.config._attn_implementation
    'kernel_fx_sdpa'
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(CAUSAL_SKIP_IMPLEMENTATION, sdpa_attention_forward)
    AttentionMaskInterface.register(CAUSAL_SKIP_IMPLEMENTATION, _causal_skipping_sdpa_mask)
    if model.config._attn_implementation != "sdpa":
        raise ValueError(
            f"skip_causal_mask_when_compiling needs a model using attn_implementation='sdpa', "
            f"this one uses {model.config._attn_implementation!r}."
        )
    model.set_attn_implementation(CAUSAL_SKIP_IMPLEMENTATION)


def _causal_skipping_sdpa_mask(**kwargs: Any) -> Any:
    from transformers.masking_utils import sdpa_mask

    # The mask function here is the causal one, possibly and-ed with transformers' packed-sequence
    # mask (added because it could not look at position_ids while tracing): ruled out by the caller.
    pure_causal = (
        kwargs.get("attention_mask") is None
        and kwargs.get("local_size") is None
        and kwargs.get("q_offset", 0) == 0
        and kwargs.get("kv_offset", 0) == 0
        and kwargs["q_length"] == kwargs["kv_length"]
        and kwargs["q_length"] > 1
    )
    return None if pure_causal else sdpa_mask(**kwargs)


def _modeling_llama() -> ModuleType:
    try:
        return importlib.import_module("transformers.models.llama.modeling_llama")
    except ImportError as exc:
        raise ImportError(
            f"mark_llama needs transformers (pip install 'transformers>=5.0'); importing its Llama model failed: {exc}"
        ) from exc
