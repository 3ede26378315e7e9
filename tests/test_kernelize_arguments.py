"""Issue 14 finding 8: kernelize's arguments are checked before anything changes; each wrong value
is a KernelFxError (a ValueError or a TypeError, as fits) naming the value and what is allowed."""

from __future__ import annotations

import pytest
import torch
from models import Scale
from torch import nn

from kernel_fx import KernelFxError, LayerRepository, LocalLayerRepository, kernelize, register_kernel_mapping, use_kernel_mapping


@pytest.mark.parametrize(("kwargs", "error", "says"), [
    ({"use_fallback": "False"}, ValueError, ["'False'", "True, False"]),
    ({"needs_torch_compile": "no"}, ValueError, ["'no'", "True or False"]),
    ({"device": "cuda:x"}, ValueError, ["'cuda:x'", "'cuda:0'"]),
    ({"device": 3}, ValueError, ["3", "torch.device"]),
    ({"filter_fn": 3}, TypeError, ["filter_fn=3", "function"]),
    ({"filter_fn": "layers.0"}, TypeError, ["'layers.0'", "function"]),
], ids=["use_fallback-str", "needs_torch_compile-str", "device-bad-index", "device-int", "filter_fn-int", "filter_fn-str"])
def test_wrong_argument_is_a_clear_error(kwargs, error, says):
    model = nn.Sequential(Scale())
    with pytest.raises(KernelFxError) as info:
        kernelize(model, **kwargs)
    assert isinstance(info.value, error)
    for text in says:
        assert text in str(info.value)
    assert "forward" not in vars(model[0])  # nothing changed


@pytest.mark.parametrize("model", [3, "model", nn.Module], ids=["int", "str", "class"])
def test_model_must_be_a_module(model):
    with pytest.raises(KernelFxError) as info:
        kernelize(model, device="cpu")
    assert isinstance(info.value, TypeError)
    assert repr(model) in str(info.value) and "nn.Module" in str(info.value)


@pytest.mark.parametrize("cls", [LayerRepository, LocalLayerRepository])
def test_repository_class_in_a_mapping(cls):
    mapping = {"Scale": {"cpu": cls}}
    for use in (use_kernel_mapping, register_kernel_mapping):
        with pytest.raises(KernelFxError) as info:
            result = use(mapping)
            if hasattr(result, "__enter__"):
                with result:
                    pass
        assert isinstance(info.value, ValueError)
        assert f"{cls.__name__} for 'Scale' on cpu is a repository class" in str(info.value)


def test_valid_arguments_still_work():
    model = nn.Sequential(Scale())
    kernelize(model, device=torch.device("cpu"), needs_torch_compile=False, use_fallback=True, filter_fn=lambda m, p: True)
    kernelize(model, device="cpu:0")
