"""Training under compile: kernels without backward stay out where autograd records, train/eval
and grad-mode switches recompile, and kernels with backward give the original gradients."""

from __future__ import annotations

import pytest
import torch
from helpers_compile import ADD_NORM, INNERS, MIX, Block, grads, kernel_module
from models import FUNCTION_SCALE, Scale, scale_source
from torch import nn

from kernel_fx import HubKernelsBackend, Outcome, Reason, use_kernel_mapping

TOL = dict(rtol=1e-5, atol=1e-5)


def _loss_and_grads(model, compiled, x):
    model.zero_grad()
    out = compiled(x)
    out.square().sum().backward()
    return out.detach(), grads(model)


def _check_against_eager(model, compiled, x):
    out, got = _loss_and_grads(model, compiled, x)
    expected, want = _loss_and_grads(model, model, x)
    torch.testing.assert_close(out, expected, **TOL)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL)


def _outcomes(record):
    return {d.path: (d.outcome, d.rejected.reason if d.rejected else None) for d in record.decisions}


@pytest.mark.parametrize("inner", INNERS)
def test_kernel_without_backward_stays_out_of_training(inner, mapping):
    model = nn.Sequential(nn.Linear(8, 8), Scale()).train()
    backend = HubKernelsBackend(inner=inner)
    with use_kernel_mapping(mapping(Scale=scale_source(has_backward=False))):
        _check_against_eager(model, torch.compile(model, backend=backend), torch.randn(3, 8))
    assert _outcomes(backend.records[0]) == {"1": (Outcome.ORIGINAL, Reason.TRAINING_FALLBACK)}


def test_kernel_without_backward_stays_out_where_grad_is_needed_in_eval(mapping):
    model = nn.Sequential(Scale()).eval()
    model.requires_grad_(False)
    backend = HubKernelsBackend(inner="eager")
    compiled = torch.compile(model, backend=backend)
    with use_kernel_mapping(mapping(Scale=scale_source(has_backward=False))):
        x = torch.randn(3, 8)
        compiled(x)  # nothing requires grad: the kernel is fine
        leaf = x.clone().requires_grad_()
        out = compiled(leaf)  # grad-mode and requires_grad are guarded: a new graph, no kernel
        out.sum().backward()
    torch.testing.assert_close(leaf.grad, model[0].weight.expand(3, 8) * 3.0)
    assert [_outcomes(r)["0"] for r in backend.records] == [
        (Outcome.KERNEL, None), (Outcome.ORIGINAL, Reason.TRAINING_FALLBACK)]


@pytest.mark.parametrize("inner", INNERS)
def test_train_eval_switch_recompiles_and_stays_correct(inner, mapping, counters):
    model = nn.Sequential(nn.Linear(8, 8), Scale())
    backend = HubKernelsBackend(inner=inner)
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(3, 8)
    with use_kernel_mapping(mapping(Scale=scale_source(has_backward=False))):
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), **TOL)
        model.train()  # dynamo would reuse the eval graph unless module.training is guarded
        _check_against_eager(model, compiled, x)
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), **TOL)
    assert counters["stats"]["unique_graphs"] == 2  # eval again reuses the first graph
    assert [_outcomes(r)["1"] for r in backend.records] == [
        (Outcome.KERNEL, None), (Outcome.ORIGINAL, Reason.TRAINING_FALLBACK)]


@pytest.mark.parametrize("inner", INNERS)
def test_kernels_with_backward_are_substituted_in_training(inner, mapping):
    model = Block().train()
    backend = HubKernelsBackend(inner=inner)
    with use_kernel_mapping(mapping(Scale=scale_source(), Mix=MIX, AddNorm=ADD_NORM)):
        _check_against_eager(model, torch.compile(model, backend=backend), torch.randn(4, 8))
    assert {d.outcome for d in backend.report.decisions} == {Outcome.KERNEL}
    assert {d.mode for d in backend.report.decisions} == {"TRAINING|TORCH_COMPILE"}


@pytest.mark.parametrize("inner", INNERS)
def test_custom_autograd_function_backward_survives(inner, mapping):
    kernels = mapping(Scale=FUNCTION_SCALE)
    backward_calls = kernel_module(kernels, "Scale").BACKWARD_CALLS
    model = nn.Sequential(nn.Linear(8, 8), Scale()).train()
    with use_kernel_mapping(kernels):
        _check_against_eager(model, torch.compile(model, backend=HubKernelsBackend(inner=inner)), torch.randn(3, 8))
    assert backward_calls  # the kernel's own backward (run, or traced by AOTAutograd)


@pytest.mark.parametrize("inner", INNERS)
def test_opaque_kernel_with_backward_in_training(inner, mapping):
    model = Block().train()
    backend = HubKernelsBackend(inner=inner)
    with use_kernel_mapping(mapping(Scale=scale_source(can_compile=False), Mix=MIX.replace("can_torch_compile = True", "can_torch_compile = False"))):
        _check_against_eager(model, torch.compile(model, backend=backend), torch.randn(4, 8))
    outcomes = _outcomes(backend.records[0])
    assert outcomes["scale"][0] is outcomes["mix"][0] is Outcome.OPAQUE_KERNEL
