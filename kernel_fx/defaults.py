"""The embedded default: a mapping of the demo's layers to the kernels bundled with kernel_fx.

>>> mapping = default_mapping()
>>> sorted(mapping)
['AddRMSNorm', 'ApplyRotary', 'Attention', 'RMSNorm', 'SiluAndMul']
>>> mapping["RMSNorm"]["cpu"].layer_name
'RMSNorm'
"""

from __future__ import annotations

from .repos import LocalLayerRepository

BUNDLED_LAYERS = ("RMSNorm", "SiluAndMul", "AddRMSNorm", "ApplyRotary", "Attention")


def default_mapping() -> dict[str, dict[str, LocalLayerRepository]]:
    """`{layer: {"cpu": repo, "cuda": repo}}` for every bundled layer, loaded like any Hub repo."""
    from .kernels import bundled_repo_path

    root = bundled_repo_path()
    return {
        name: {device: LocalLayerRepository(root, layer_name=name) for device in ("cpu", "cuda")}
        for name in BUNDLED_LAYERS
    }
