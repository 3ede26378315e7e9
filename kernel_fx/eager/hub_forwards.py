"""Forwards the Hugging Face `kernels` package installed: found, and given back, before kernel_fx
installs its own — never stacked on top.

transformers (≥ 5.25) kernelizes with `kernels` in `from_pretrained` by default, and re-kernelizes
on every `model.train()` / `model.eval()` while its `use_kernels` is on. `kernels` swaps a
module's forward per instance and records the repository in the instance's `_kernel_repo`.

>>> import torch
>>> from torch import nn
>>> release_hub_forwards(nn.Sequential(nn.Linear(2, 2)))
[]
"""

from __future__ import annotations

import logging
from types import MethodType

from torch import nn

logger = logging.getLogger(__name__)

HUB_REPO_ATTR = "_kernel_repo"  # where `kernels` records the repository of a forward it installed


def hub_kernelized(model: nn.Module, named: list[tuple[str, nn.Module]] | None = None) -> list[tuple[str, str]]:
    """(path, repository) of every module whose forward the `kernels` package installed
    (`named`: `model.named_modules()` already listed)."""
    found = []
    for path, module in named if named is not None else model.named_modules():
        repo = vars(module).get(HUB_REPO_ATTR)
        if repo is not None and isinstance(vars(module).get("forward"), MethodType):
            found.append((path or "<root>", _describe(repo)))
    return found


def release_hub_forwards(model: nn.Module, named: list[tuple[str, nn.Module]] | None = None) -> list[str]:
    """Give back every forward `kernels` installed on `model` and stop transformers from installing
    them again on `train()`/`eval()`; return one line per module given back, for the report."""
    named = named if named is not None else list(model.named_modules())
    found = hub_kernelized(model, named)
    if getattr(model, "use_kernels", False) and callable(getattr(model, "reset_kernels", None)):
        model.reset_kernels()  # transformers: original forwards back, use_kernels off
    for _path, module in named:
        if vars(module).get(HUB_REPO_ATTR) is not None and isinstance(vars(module).get("forward"), MethodType):
            del vars(module)["forward"]
            del vars(module)[HUB_REPO_ATTR]
    lines = [f"{path}: the `kernels` package had installed {repo}; its original forward was restored first" for path, repo in found]
    for line in lines:
        logger.warning("kernel_fx: %s", line)
    return lines


def _describe(repo: object) -> str:
    """`org/repo@v1 (RMSNorm)` for the `kernels` package's repository objects (private fields)."""
    fields = {k.lstrip("_"): v for k, v in vars(repo).items()} if hasattr(repo, "__dict__") else {}
    where = fields.get("repo_id") or fields.get("repo_path")
    if where is None:
        return repr(repo)
    pin = fields.get("revision") or (f"v{fields['version']}" if fields.get("version") is not None else None)
    layer = fields.get("layer_name")
    return f"{where}{'@' + pin if pin else ''}" + (f" ({layer})" if layer else "")
