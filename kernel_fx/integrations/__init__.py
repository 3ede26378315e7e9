"""Marking third-party model classes extensible, with mappings to the bundled kernels.

Each integration imports its library only when called, so `import kernel_fx` stays cheap.
"""

from __future__ import annotations

from .llama import LLAMA_LAYERS, llama_mapping, mark_llama, skip_causal_mask_when_compiling
from .transformers import Prepared, prepare, transformers_mapping

__all__ = ["LLAMA_LAYERS", "Prepared", "llama_mapping", "mark_llama", "prepare", "skip_causal_mask_when_compiling", "transformers_mapping"]
