"""The demo model: shapes, determinism, backward, extensible layers and their reference maths."""

from __future__ import annotations

import inspect

import pytest
import torch

from kernel_fx.demo import DemoConfig, build_demo_model
from kernel_fx.demo import model as demo

SMALL = DemoConfig(num_hidden_layers=2)

EXTENSIBLE = {
    demo.RMSNorm: "RMSNorm",
    demo.AddRMSNorm: "AddRMSNorm",
    demo.SiluAndMul: "SiluAndMul",
    demo.ApplyRotary: "ApplyRotary",
    demo.Attention: "Attention",
}


def _ids(batch: int = 2, seq: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, SMALL.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_default_config() -> None:
    config = DemoConfig()
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (1000, 256, 688)
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (4, 8, 4)
    assert (config.max_position_embeddings, config.rms_norm_eps, config.head_dim) == (512, 1e-6, 32)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hidden_size": 250},
        {"num_key_value_heads": 3},
        {"vocab_size": 0},
        {"rms_norm_eps": 0.0},
        {"hidden_size": 24, "num_attention_heads": 8, "num_key_value_heads": 4},  # head_dim 3
    ],
    ids=["hidden-not-divisible", "kv-heads-not-divisible", "zero-vocab", "zero-eps", "odd-head-dim"],
)
def test_config_rejects_inconsistent_sizes(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="DemoConfig"):
        DemoConfig(**kwargs)


def test_logits_shape_and_dtype() -> None:
    model = build_demo_model(SMALL)
    logits = model(_ids(3, 7))
    assert logits.shape == (3, 7, SMALL.vocab_size)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_build_is_deterministic_and_leaves_global_rng_alone() -> None:
    state = torch.get_rng_state()
    a, b = build_demo_model(SMALL, seed=3), build_demo_model(SMALL, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    torch.testing.assert_close(a(_ids()), b(_ids()), rtol=0, atol=0)
    c = build_demo_model(SMALL, seed=4)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_build_returns_eval_model_in_requested_dtype() -> None:
    model = build_demo_model(SMALL, dtype=torch.bfloat16)
    assert not model.training
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model(_ids()).dtype == torch.bfloat16


def test_causal_prefix_is_independent_of_later_tokens() -> None:
    model = build_demo_model(SMALL)
    ids = _ids(1, 12)
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % SMALL.vocab_size
    torch.testing.assert_close(model(ids)[:, :8], model(changed)[:, :8])


def test_backward_reaches_every_parameter() -> None:
    model = build_demo_model(SMALL).train()
    ids = _ids()
    loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_sequence_longer_than_max_positions_is_rejected() -> None:
    model = build_demo_model(DemoConfig(num_hidden_layers=1, max_position_embeddings=8))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(_ids(1, 9))


@pytest.mark.parametrize("cls", list(EXTENSIBLE), ids=lambda c: c.__name__)
def test_extensible_classes_carry_layer_name(cls: type) -> None:
    assert cls.kernel_layer_name == EXTENSIBLE[cls]


def test_model_contains_each_extensible_layer() -> None:
    model = build_demo_model(SMALL)
    counts = {name: 0 for name in EXTENSIBLE.values()}
    for module in model.modules():
        name = getattr(module, "kernel_layer_name", None)
        if name is not None:
            counts[name] += 1
    layers = SMALL.num_hidden_layers
    assert counts == {
        "RMSNorm": layers + 1, "AddRMSNorm": layers, "SiluAndMul": layers, "ApplyRotary": layers, "Attention": layers
    }


def test_norm_layers_expose_weight_and_variance_epsilon() -> None:
    for cls in (demo.RMSNorm, demo.AddRMSNorm):
        layer = cls(16, eps=1e-5)
        assert layer.weight.shape == (16,) and layer.variance_epsilon == 1e-5
        assert list(inspect.signature(cls.forward).parameters)[0] == "self"


def test_add_rms_norm_is_add_then_rms_norm() -> None:
    torch.manual_seed(0)
    norm, add_norm = demo.RMSNorm(32), demo.AddRMSNorm(32)
    with torch.no_grad():
        norm.weight.normal_()
        add_norm.weight.copy_(norm.weight)
    h, r = torch.randn(4, 32), torch.randn(4, 32)
    normed, residual = add_norm(h, r)
    torch.testing.assert_close(residual, h + r)
    torch.testing.assert_close(normed, norm(h + r))


def test_rms_norm_matches_float64_formula() -> None:
    torch.manual_seed(0)
    norm = demo.RMSNorm(32, eps=1e-6)
    x = torch.randn(4, 32)
    x64 = x.double()
    expected = x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm(x).double(), expected)


def test_attention_with_grouped_kv_equals_repeated_heads() -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    out = demo.Attention()(q, k, v)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=True
    )
    torch.testing.assert_close(out, expected)


def test_rotary_accepts_shared_tables() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8)
    angles = torch.randn(5, 4).repeat(1, 2)  # (T, D)
    shared = demo.ApplyRotary()(q, k, angles.cos(), angles.sin())
    batched = demo.ApplyRotary()(q, k, angles.cos().expand(2, 5, 8), angles.sin().expand(2, 5, 8))
    for a, b in zip(shared, batched):
        torch.testing.assert_close(a, b)
    # A rotation keeps the norm of each (x_i, x_{i + D/2}) pair, hence of each vector.
    torch.testing.assert_close(shared[0].norm(dim=-1), q.norm(dim=-1))
