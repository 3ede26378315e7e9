import pytest
import torch

from kernel_fx import CUDAProperties, Device, MappingError, ROCMProperties
from kernel_fx.devices import device_index


def test_parse_accepts_strings_with_index_and_torch_devices():
    assert Device.parse("cuda:1") == Device("cuda")
    assert Device.parse(torch.device("cpu")) == Device("cpu")
    assert device_index("cuda:1") == 1
    assert device_index(torch.device("cuda", 2)) == 2
    assert device_index("cpu") is None


def test_unknown_device_type_names_the_allowed_ones():
    with pytest.raises(MappingError, match="Unsupported device type 'ipu'. Supported device types are: cpu, cuda") as raised:
        Device("ipu")
    assert isinstance(raised.value, ValueError)  # as in `kernels`


def test_every_device_type_of_kernels_is_a_mapping_key():
    for type_ in ("cpu", "cuda", "rocm", "mps", "xpu", "npu", "neuron", "tpu"):  # kernels 0.19's list
        assert Device.parse(type_) == Device(type_)


def test_properties_must_fit_the_device_type():
    with pytest.raises(MappingError, match="allowed properties: CUDAProperties"):
        Device("cuda", properties=ROCMProperties(min_capability=90, max_capability=94))
    with pytest.raises(MappingError, match="allowed properties: none"):
        Device("cpu", properties=CUDAProperties(min_capability=80, max_capability=90))


def test_empty_or_non_integer_capability_ranges_are_rejected():
    with pytest.raises(MappingError, match="above max_capability"):
        CUDAProperties(min_capability=90, max_capability=80)
    with pytest.raises(MappingError, match="needs integers"):
        CUDAProperties(min_capability=8.0, max_capability=9)


def test_devices_are_hashable_mapping_keys():
    a = Device("cuda", properties=CUDAProperties(min_capability=80, max_capability=89))
    b = Device("cuda", properties=CUDAProperties(min_capability=80, max_capability=89))
    assert {a: 1}[b] == 1
