import torch
from models import Host, Scale, twice
from torch import nn

import kernel_fx
from kernel_fx.layers import FunctionLayer, layer_name_of


def test_decorator_keeps_eager_behaviour_and_marks_the_class():
    layer = Scale(4)
    x = torch.randn(2, 4)
    torch.testing.assert_close(layer(x), x * layer.weight * 3.0)
    assert Scale.kernel_layer_name == "Scale"
    assert "forward" not in vars(layer)


def test_subclasses_inherit_the_name():
    class Bigger(Scale):
        pass

    assert layer_name_of(Bigger()) == "Scale"


def test_replace_marks_a_foreign_class():
    class Foreign(nn.Module):
        def forward(self, x):
            return x

    assert layer_name_of(Foreign()) is None
    kernel_fx.replace_kernel_forward_from_hub(Foreign, "Identity")
    assert layer_name_of(Foreign()) == "Identity"


def test_a_class_marked_by_the_hf_kernels_decorator_counts():
    class MarkedElsewhere(nn.Module):
        kernel_layer_name = "SiluAndMul"  # what kernels.use_kernel_forward_from_hub sets

        def forward(self, x):
            return x

    assert layer_name_of(MarkedElsewhere()) == "SiluAndMul"


def test_function_layers_are_per_instance():
    a, b = Host(), Host()
    assert isinstance(a.twice, FunctionLayer) and a.twice is not b.twice
    assert layer_name_of(a.twice) == "Twice"
    assert twice(torch.ones(1)).item() == 2.0


def test_use_kernelized_func_needs_a_marked_function():
    import pytest

    with pytest.raises(kernel_fx.MappingError, match="decorate the function"):
        kernel_fx.use_kernelized_func(lambda x: x)
