"""Kernel mappings: layer name -> device -> mode -> repository, scoped in a `ContextVar`.

>>> from kernel_fx import LocalLayerRepository, Mode, use_kernel_mapping
>>> repo = LocalLayerRepository("/kernels/act", layer_name="SiluAndMul")
>>> with use_kernel_mapping({"SiluAndMul": {"cpu": repo}}):
...     choice = resolve("SiluAndMul", Device("cpu"), Mode.INFERENCE)
>>> choice.repository is repo, str(choice.entry_mode)
(True, 'FALLBACK')
>>> resolve("SiluAndMul", Device("cpu"), Mode.INFERENCE).reason
<Reason.NO_MAPPING: 'no mapping'>
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .decisions import Reason, Rejected
from .devices import Device
from .errors import MappingError
from .modes import Mode, check_mapping_mode, fallback_chain
from .repos import AnyRepository, check_repository

# layer name -> device key -> mapping mode -> repository; never mutated in place (copy on write).
KernelMapping = Mapping[str, Mapping[Device, Mapping[Mode, AnyRepository]]]

_EMPTY: KernelMapping = MappingProxyType({})
_MAPPING: ContextVar[KernelMapping] = ContextVar("kernel_fx_mapping", default=_EMPTY)


def normalize_mapping(mapping: Mapping[str, Any]) -> dict[str, dict[Device, dict[Mode, AnyRepository]]]:
    """Validate a user mapping and spell it out fully: `{name: {Device: {Mode: repo}}}`.

    A bare repository as a device value stands for `{Mode.FALLBACK: repo}`.
    """
    if not isinstance(mapping, Mapping):
        raise MappingError(f"A kernel mapping must be a dict {{layer_name: {{device: repository}}}}, got {mapping!r}.")
    result: dict[str, dict[Device, dict[Mode, AnyRepository]]] = {}
    for layer_name, devices in mapping.items():
        if not isinstance(layer_name, str) or not layer_name:
            raise MappingError(f"Mapping key {layer_name!r} must be a layer name such as 'RMSNorm'.")
        if not isinstance(devices, Mapping):
            raise MappingError(f"Mapping for {layer_name!r} must be a dict {{device: repository}}, got {devices!r}.")
        per_device: dict[Device, dict[Mode, AnyRepository]] = {}
        for key, value in devices.items():
            device = Device.parse(key) if isinstance(key, str) else key
            if not isinstance(device, Device):
                raise MappingError(f"Device key {key!r} for {layer_name!r} must be a device type string or kernel_fx.Device.")
            modes = dict(value) if isinstance(value, Mapping) else {Mode.FALLBACK: value}
            for mode, repo in modes.items():
                check_mapping_mode(mode)
                check_repository(repo, f"{layer_name!r} on {device}")
            per_device[device] = modes
        result[layer_name] = per_device
    return result


def _merged(base: KernelMapping, update: dict[str, dict[Device, dict[Mode, AnyRepository]]]) -> KernelMapping:
    merged = {name: {dev: dict(modes) for dev, modes in devs.items()} for name, devs in base.items()}
    for name, devices in update.items():
        for device, modes in devices.items():
            # Entries for other modes of the same layer and device stay (the anchor drops them).
            merged.setdefault(name, {}).setdefault(device, {}).update(modes)
    return MappingProxyType(merged)


def register_kernel_mapping(mapping: Mapping[str, Any], inherit_mapping: bool = True) -> None:
    """Add `mapping` to the current context's mapping (replace it when `inherit_mapping=False`)."""
    base = _MAPPING.get() if inherit_mapping else _EMPTY
    _MAPPING.set(_merged(base, normalize_mapping(mapping)))


@contextlib.contextmanager
def use_kernel_mapping(mapping: Mapping[str, Any], *, inherit_mapping: bool = True) -> Iterator[None]:
    """Use `mapping` inside a `with` block; the previous mapping is back afterwards, also on errors."""
    base = _MAPPING.get() if inherit_mapping else _EMPTY
    token = _MAPPING.set(_merged(base, normalize_mapping(mapping)))
    try:
        yield
    finally:
        _MAPPING.reset(token)


def current_mapping() -> KernelMapping:
    """The mapping in effect in this context (read-only)."""
    return _MAPPING.get()


@dataclass(frozen=True)
class Choice:
    """The repository chosen for a layer: which device entry and which mapping mode supplied it."""

    repository: AnyRepository
    device: Device
    entry_mode: Mode


def _ranked_devices(
    entries: Mapping[Device, Any], device_type: str, capability: Callable[[], int]
) -> list[Device] | Rejected:
    same_type = [d for d in entries if d.type == device_type]
    if not same_type:
        listed = ", ".join(sorted({str(d) for d in entries}))
        return Rejected(Reason.NO_DEVICE_ENTRY, f"mapping has entries for {listed}, not {device_type}")
    ranged = [d for d in same_type if d.properties is not None]
    plain = [d for d in same_type if d.properties is None]
    if not ranged:
        return plain
    try:
        cap = capability()
    except RuntimeError as exc:
        if plain:
            return plain
        return Rejected(Reason.CAPABILITY_UNAVAILABLE, f"capability ranges mapped but unreadable: {exc}")
    matching = [d for d in ranged if d.properties.contains(cap)]  # type: ignore[union-attr]
    # Narrowest range first; equal widths by higher minimum, then lower maximum: order-independent.
    matching.sort(key=lambda d: (d.properties.width, -d.properties.min_capability, d.properties.max_capability))  # type: ignore[union-attr]
    if not matching and not plain:
        ranges = ", ".join(str(d) for d in ranged)
        return Rejected(Reason.CAPABILITY_OUT_OF_RANGE, f"capability {cap} outside mapped ranges {ranges}")
    return matching + plain


def resolve(
    layer_name: str,
    device: Device,
    mode: Mode,
    *,
    capability: Callable[[], int] | None = None,
    mapping: KernelMapping | None = None,
) -> Choice | Rejected:
    """The repository for `layer_name` on `device` in kernelize mode `mode`, or why there is none."""
    mapping = current_mapping() if mapping is None else mapping
    entries = mapping.get(layer_name)
    if not entries:
        return Rejected(Reason.NO_MAPPING, f"no kernel mapped for layer {layer_name!r}")
    devices = _ranked_devices(entries, device.type, capability or _no_capability)
    if isinstance(devices, Rejected):
        return devices
    chain = fallback_chain(mode)
    for candidate in devices:
        for entry_mode in chain:
            repo = entries[candidate].get(entry_mode)
            if repo is not None:
                return Choice(repo, candidate, entry_mode)
    present = sorted({str(m) for d in devices for m in entries[d]})
    return Rejected(Reason.NO_MODE_ENTRY, f"entries for modes {', '.join(present)}; none usable in mode {mode!s}")


def _no_capability() -> int:
    raise RuntimeError("no capability reader given")
