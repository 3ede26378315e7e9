"""Devices as mapping keys: a device type, optionally narrowed by a capability range.

>>> Device("cuda", properties=CUDAProperties(min_capability=80, max_capability=89))
Device(type='cuda', properties=CUDAProperties(min_capability=80, max_capability=89))
>>> Device.parse("cuda:1")
Device(type='cuda', properties=None)
>>> Device.parse("tpu").type, Device.parse("neuron").type
('tpu', 'neuron')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import MappingError

if TYPE_CHECKING:
    import torch
    from torch import nn

# The device types of the `kernels` package (0.19): TPU and AWS Neuron joined in 0.18.
DEVICE_TYPES = ("cpu", "cuda", "rocm", "mps", "xpu", "npu", "neuron", "tpu")


@dataclass(frozen=True)
class CUDAProperties:
    """A range of CUDA compute capabilities, written as integers: 80 means 8.0, 90 means 9.0."""

    min_capability: int
    max_capability: int

    def __post_init__(self) -> None:
        _check_range(self, "CUDAProperties")

    def contains(self, capability: int) -> bool:
        return self.min_capability <= capability <= self.max_capability

    @property
    def width(self) -> int:
        return self.max_capability - self.min_capability


@dataclass(frozen=True)
class ROCMProperties:
    """A range of ROCm (gfx) capabilities, written as integers like CUDA's (e.g. 90 for gfx90x)."""

    min_capability: int
    max_capability: int

    def __post_init__(self) -> None:
        _check_range(self, "ROCMProperties")

    contains = CUDAProperties.contains
    width = CUDAProperties.width


def _check_range(props: CUDAProperties | ROCMProperties, name: str) -> None:
    lo, hi = props.min_capability, props.max_capability
    if not (isinstance(lo, int) and isinstance(hi, int)) or isinstance(lo, bool) or isinstance(hi, bool):
        raise MappingError(f"{name}(min_capability={lo!r}, max_capability={hi!r}) needs integers such as 80 for 8.0.")
    if lo > hi:
        raise MappingError(f"{name} min_capability={lo} is above max_capability={hi}; the range must not be empty.")


Properties = CUDAProperties | ROCMProperties
_PROPERTIES_FOR = {"cuda": CUDAProperties, "rocm": ROCMProperties}


@dataclass(frozen=True)
class Device:
    """A mapping key: `Device("cuda")`, or one narrowed to a capability range."""

    type: str
    properties: Properties | None = None

    def __post_init__(self) -> None:
        if self.type not in DEVICE_TYPES:
            raise MappingError(
                f"Unsupported device type {self.type!r}. Supported device types are: {', '.join(DEVICE_TYPES)}."
            )
        if self.properties is not None:
            wanted = _PROPERTIES_FOR.get(self.type)
            if wanted is None or not isinstance(self.properties, wanted):
                allowed = wanted.__name__ if wanted else "none"
                raise MappingError(
                    f"Device type {self.type!r} got properties {self.properties!r}; allowed properties: {allowed}."
                )

    @classmethod
    def parse(cls, device: str | torch.device | Device) -> Device:
        """A `Device` from `"cuda"`, `"cuda:1"`, a `torch.device` or a `Device` (which is returned as is)."""
        if isinstance(device, Device):
            return device
        type_ = getattr(device, "type", None)
        if type_ is None:
            if not isinstance(device, str):
                raise MappingError(
                    f"device={device!r} is not a device; use a string like 'cuda:0', a torch.device or kernel_fx.Device."
                )
            type_ = device.split(":", 1)[0]
        return cls(type_)

    def __str__(self) -> str:
        if self.properties is None:
            return self.type
        return f"{self.type}[{self.properties.min_capability}..{self.properties.max_capability}]"


def device_index(device: str | torch.device | Device) -> int | None:
    """The index in `"cuda:1"` or `torch.device("cuda", 1)`, or None when there is none."""
    if isinstance(device, str):
        return int(device.split(":", 1)[1]) if ":" in device else None
    return getattr(device, "index", None)


def read_capability(type_: str, index: int | None) -> int:
    """The compute capability of device `index` as an integer (e.g. 90), read only when asked.

    Raises `RuntimeError` when this torch cannot see such a device (CPU-only builds).
    """
    import torch

    if type_ not in ("cuda", "rocm"):
        raise RuntimeError(f"device type {type_!r} has no compute capability")
    if not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} sees no {type_} device")
    major, minor = torch.cuda.get_device_capability(index if index is not None else torch.cuda.current_device())
    return major * 10 + minor


# -- a model's device ----------------------------------------------------------------------------


def _first_tensor(model: nn.Module) -> torch.Tensor | None:
    for module in model.modules():  # one walk, stopping at the first module holding a tensor
        for tensor in (*module._parameters.values(), *module._buffers.values()):
            if tensor is not None:
                return tensor
    return None


def model_device(model: nn.Module) -> torch.device | str:
    """The device of a model's first parameter or buffer (`rocm:N` on ROCm builds); every path's default."""
    import torch

    tensor = _first_tensor(model)
    if tensor is None:
        raise MappingError(
            f"kernelize cannot infer the device of {type(model).__name__}: it has no parameters or buffers; "
            "pass device='cpu', 'cuda:0' or a torch.device."
        )
    if tensor.device.type == "cuda" and getattr(torch.version, "hip", None):
        return f"rocm:{tensor.device.index}"
    return tensor.device
