"""kernelize and hubkernels beyond one device: DDP (DDPOptimizer on and off), FSDP2, tensor
parallel (a plain-torch and a custom-op kernel on DTensors) and activation checkpointing, on 2 CPU
ranks with gloo spawned from here (see dist_workers.py). Every case's loss and gradients equal the
un-kernelized model in one process, and its report lists every site with its full path.
"""

from __future__ import annotations

import dist_workers as w
import pytest
import torch
import torch.distributed as dist

from kernel_fx.decisions import Reason

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"),
]

TOL = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(scope="module")
def demo_reference():
    return w.reference("demo")


def assert_matches(case: dict, reference: dict) -> None:
    torch.testing.assert_close(case["loss"], reference["loss"], **TOL, msg=lambda m: f"{case['case']}: loss: {m}")
    assert set(case["grads"]) == set(reference["grads"])
    for name, grad in reference["grads"].items():
        torch.testing.assert_close(case["grads"][name], grad, **TOL, msg=lambda m, n=name: f"{case['case']}: grad of {n}: {m}")


def outcomes(case: dict) -> dict[str, str]:
    """{path: outcome} of the case's sites (a path listed twice must agree)."""
    found: dict[str, str] = {}
    for path, outcome, _reason, _detail in case["decisions"]:
        assert found.setdefault(path, outcome) == outcome, f"{case['case']}: {path} reported as {found[path]} and {outcome}"
    return found


def kernels(case: dict) -> list[str]:
    return sorted(p for p, o in outcomes(case).items() if o != "original")


# -- DDP ------------------------------------------------------------------------------------------


def test_ddp_every_demo_site_with_and_without_ddp_optimizer(demo_reference):
    eager, with_optimizer, without = w.spawn("ddp")
    for case in (eager, with_optimizer, without):
        assert_matches(case, demo_reference)
        assert kernels(case) == sorted(w.DEMO_SITES), case["case"]


def test_ddp_optimizer_llama_every_site_even_across_bucket_boundaries():
    """LlamaMLP holds three projections: a 1 MB bucket boundary falls inside its call. Calls that
    own parameters are decided while dynamo traces, before DDPOptimizer cuts the graph."""
    reference = w.reference("llama")
    (case,) = w.spawn("ddp", kind="llama", cases=("ddp_optimizer",))
    assert_matches(case, reference)
    expected = [f"model.layers.{i}.{n}" for i in range(2) for n in ("input_layernorm", "mlp", "post_attention_layernorm", "self_attn")]
    assert kernels(case) == sorted([*expected, "model.norm"])
    assert not [d for d in case["decisions"] if d[2] == Reason.PARTIAL_REGION.value]


# -- FSDP2 ----------------------------------------------------------------------------------------


def test_fsdp2_full_paths_and_every_layer_of_a_shared_graph(demo_reference):
    eager, per_layer, whole = w.spawn("fsdp")
    for case in (eager, per_layer, whole):
        assert_matches(case, demo_reference)
    assert kernels(eager) == sorted(w.DEMO_SITES)
    assert kernels(per_layer) == sorted(p for p in w.DEMO_SITES if p != "norm")  # the root runs eagerly
    assert kernels(whole) == sorted(w.DEMO_SITES)


# -- tensor parallel ------------------------------------------------------------------------------

# Sites whose inputs are DTensors in the tensor-parallel plan (the residual stream's norms); the
# others (rotary, attention, activation) get the projections' local shards.
NORMS = ["layers.0.input_layernorm", "layers.0.post_attention_layernorm", "layers.1.input_layernorm",
         "layers.1.post_attention_layernorm", "norm"]


@pytest.mark.parametrize("kind, dtensor", [("plain", "native"), ("custom_op", "local")], ids=["plain-native", "custom_op-local"])
def test_tensor_parallel_kernel_that_declares_dtensor_runs_everywhere(kernel_repo, demo_reference, kind, dtensor):
    repo = kernel_repo({"torch-cpu": w.kernel_files(kind, dtensor)}, name=kind)
    eager, compiled = w.spawn("tensor_parallel", repo=str(repo))
    for case in (eager, compiled):
        assert_matches(case, demo_reference)
        assert kernels(case) == sorted(w.DEMO_SITES), case["case"]
        assert case["fallbacks"] == {}


def test_tensor_parallel_custom_op_without_dtensor_support_falls_back_with_a_reason(kernel_repo, demo_reference):
    repo = kernel_repo({"torch-cpu": w.kernel_files("custom_op", None)}, name="custom_op")
    eager, compiled = w.spawn("tensor_parallel", repo=str(repo))
    for case in (eager, compiled):
        assert_matches(case, demo_reference)  # the original forwards ran: no "sharding strategy" crash
    assert sorted(eager["fallbacks"]) == NORMS
    assert all(r.startswith("DTensor inputs: ") and "declares no DTensor handling" in r for r in eager["fallbacks"].values())
    reasons = {path: reason for path, _outcome, reason, _detail in compiled["decisions"]}
    assert sorted(p for p, r in reasons.items() if r == Reason.DTENSOR.value) == NORMS
    assert kernels(compiled) == sorted(set(w.DEMO_SITES) - set(NORMS))


# -- activation checkpointing ---------------------------------------------------------------------


def test_checkpointed_layers_under_ddp(demo_reference):
    eager, compiled = w.spawn("checkpointed")
    for case in (eager, compiled):
        assert_matches(case, demo_reference)
        assert kernels(case) == sorted(w.DEMO_SITES), case["case"]
