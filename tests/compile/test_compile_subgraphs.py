"""Marked calls inside higher-order-op bodies: per-layer activation checkpointing
(`tag_activation_checkpoint`) on the demo model, and `torch.cond` branches — substituted and
reported, with eager's numbers."""

from __future__ import annotations

import copy

import pytest
import torch
from models import Scale, scale_source
from torch import nn
from torch.utils.checkpoint import checkpoint

import kernel_fx
from kernel_fx import HubKernelsBackend, Outcome
from kernel_fx.defaults import default_mapping
from kernel_fx.demo import DemoConfig, build_demo_model


class Checkpointed(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return checkpoint(self.layer, *args, use_reentrant=False)


def checkpointed_demo() -> nn.Module:
    config = DemoConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=32)
    model = build_demo_model(config).train()
    for i, layer in enumerate(model.layers):
        model.layers[i] = Checkpointed(layer)
    return model


@pytest.mark.parametrize("inner", ["eager", "aot_eager"])
def test_sites_inside_checkpointed_layers_are_substituted(inner):
    model = checkpointed_demo()
    reference = copy.deepcopy(model)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    expected = reference(ids)
    expected.sum().backward()
    backend = HubKernelsBackend(inner=inner)
    with kernel_fx.use_kernel_mapping(default_mapping()):
        out = torch.compile(model, backend=backend)(ids)
    out.sum().backward()
    torch.testing.assert_close(out, expected)
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4)
    decisions = backend.report.decisions
    assert len(decisions) == 11 and all(d.uses_kernel for d in decisions)  # 5 per layer, and the final norm
    assert {d.path for d in decisions} >= {"layers.0.layer.self_attn.attn", "layers.1.layer.mlp.act", "norm"}
    (record,) = backend.records
    assert {diff.path for diff in record.site_diffs} == {d.path for d in decisions}


class Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = Scale()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cond(x.sum() > 0, lambda y: self.scale(y), lambda y: y - 1, (x,))


@pytest.mark.parametrize("inner", ["eager", "aot_eager"])
def test_sites_inside_cond_branches_are_substituted(inner, mapping):
    model = Branches().eval()
    backend = HubKernelsBackend(inner=inner)
    with kernel_fx.use_kernel_mapping(mapping(Scale=scale_source())), torch.no_grad():
        compiled = torch.compile(model, backend=backend)
        for x in (torch.ones(3, 8), -torch.ones(3, 8)):  # both branches run
            torch.testing.assert_close(compiled(x), model(x))
    (decision,) = backend.report.decisions
    assert decision.path == "scale" and decision.outcome is Outcome.KERNEL
    (diff,) = backend.records[0].site_diffs
    assert diff.path == "scale" and any("aten.mul" in line for line in diff.after)
