"""The eager path: give each extensible module instance its kernel's forward, per instance.

>>> import torch
>>> from torch import nn
>>> import kernel_fx
>>> @kernel_fx.use_kernel_forward_from_hub("Scale")
... class Scale(nn.Module):
...     def forward(self, x):
...         return 2 * x
>>> model = nn.Sequential(Scale())
>>> _ = kernelize(model, device="cpu")       # no mapping: every site keeps its forward
>>> kernel_fx.report(model).summary()
'1 site: 0 kernel, 1 original (no mapping: 1)'
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from .devices import Device, device_index, read_capability
from .errors import KernelFxError, KernelizeError
from .forwards import CONDITIONS, Condition, ForwardPlan, installed_forward, make_forward, original_forward, plan_forward
from .layers import layer_name_of, original_signature
from .mapping import Choice, resolve
from .modes import Mode, check_kernelize_mode
from .report import Decision, Outcome, Reason, Rejected, Report
from .repos import AnyRepository, load_layer
from .validation import kernel_problem

logger = logging.getLogger(__name__)

SITES_ATTR = "_kernel_fx_sites"
FilterFn = Callable[[nn.Module, str], bool]


def kernelize(
    model: nn.Module,
    *,
    mode: Mode | None = None,
    device: str | torch.device | None = None,
    needs_torch_compile: bool = False,
    use_fallback: bool = True,
    filter_fn: FilterFn | None = None,
) -> nn.Module:
    """Replace, in place, the forward of every extensible module that has a kernel; return `model`.

    `mode=None` decides per call: a kernel without backward runs only while the module is not
    training and autograd is not recording, so `model.train()` / `model.eval()` and
    `torch.no_grad()` take effect without kernelizing again. A `Mode` fixes the choice once,
    like the Hugging Face `kernels` package. Each site's decision is kept: `kernel_fx.report(model)`.
    """
    if mode is not None:
        check_kernelize_mode(mode)
        if needs_torch_compile:
            mode = mode | Mode.TORCH_COMPILE
    if device is None:
        device = _model_device(model)
    target = Device.parse(device)
    planner = _Planner(target, device_index(device))
    planner.conditions = (Condition.static(mode),) if mode is not None else CONDITIONS
    planner.compile_only = mode is None and needs_torch_compile
    disabled = _disabled()
    plans = []
    for path, module in model.named_modules():
        layer_name = layer_name_of(module)
        if layer_name is None:
            continue
        if disabled:
            site = planner.skipped(module, layer_name, _DISABLED)
        elif filter_fn is not None and not filter_fn(module, path):
            site = planner.skipped(module, layer_name, _FILTERED)
        else:
            site = planner.site(module, layer_name)
        if not use_fallback:
            _raise_on_fallback(path, layer_name, target, mode, site.slots, needs_torch_compile)
        plans.append((path, module, site))
    sites = [_install(path, module, site, planner.backend) for path, module, site in plans]
    setattr(model, SITES_ATTR, sites)
    return model


def unkernelize(model: nn.Module) -> nn.Module:
    """Give every module of `model` its original forward back; return `model`."""
    for module in model.modules():
        forward = installed_forward(module)
        if forward is not None:
            forward.uninstall()
    if SITES_ATTR in vars(model):
        delattr(model, SITES_ATTR)
    return model


def report(model: nn.Module) -> Report:
    """The decisions of the last `kernelize(model)`, one per site and condition."""
    sites = vars(model).get(SITES_ATTR)
    if sites is None:
        raise KernelFxError(f"{type(model).__name__} has not been kernelized; call kernel_fx.kernelize(model) first.")
    return Report([replace(d, path=path) for path, decisions in sites for d in decisions])


# -- planning ---------------------------------------------------------------------------------


class _Slot:
    """What runs under one condition: a kernel class (or None for the original) and why."""

    __slots__ = ("kernel", "repository", "rejected")

    def __init__(self, kernel: type[nn.Module] | None, repository: AnyRepository | None, rejected: Rejected | None):
        self.kernel, self.repository, self.rejected = kernel, repository, rejected


class _Site(NamedTuple):
    slots: dict[Condition, _Slot]
    decisions: tuple[Decision, ...]
    plan: ForwardPlan | None


_DISABLED = Rejected(Reason.DISABLED, "KERNEL_FX_DISABLE is set")
_FILTERED = Rejected(Reason.FILTERED, "filter_fn returned False")


class _Planner:
    """Resolves, loads and validates kernels for one kernelize call, caching per layer and class.

    The compiled path plans with it too, one condition per call site (`slot`), with
    `opaque_ok=True`: a kernel with `can_torch_compile = False` is planned under compiling
    conditions instead of rejected, because the graph pass runs it as an opaque op.
    """

    def __init__(self, device: Device, index: int | None, *, opaque_ok: bool = False) -> None:
        self.device = device
        self.opaque_ok = opaque_ok
        self.backend = "metal" if device.type == "mps" else device.type
        self._index = index
        self._capability: int | RuntimeError | None = None
        self._loaded: dict[AnyRepository, type[nn.Module] | Exception] = {}
        self._slots: dict[tuple[str, Any, Condition], _Slot] = {}
        self._sites: dict[tuple, _Site] = {}
        self.conditions: tuple[Condition, ...] = CONDITIONS
        self.compile_only = False

    def capability(self) -> int:
        if self._capability is None:
            try:
                self._capability = read_capability(self.device.type, self._index)
            except RuntimeError as exc:
                self._capability = exc
        if isinstance(self._capability, RuntimeError):
            raise self._capability
        return self._capability

    def site(self, module: nn.Module, layer_name: str) -> _Site:
        """Slots, decisions and forward plan of a site; sites of one class share them."""
        original = original_forward(module)
        key = (layer_name, type(module), original)
        if key not in self._sites:
            slots = {c: self._slot(module, layer_name, original, c) for c in self.conditions}
            if self.compile_only:  # eager calls too use only compile-able kernels
                slots = {c: slots[Condition(c.grad, True)] for c in self.conditions}
            self._sites[key] = self._site(module, layer_name, original, slots)
        return self._sites[key]

    def skipped(self, module: nn.Module, layer_name: str, rejected: Rejected) -> _Site:
        """A site that keeps its original forward for `rejected` (filtered out, disabled)."""
        key = (layer_name, type(module), rejected)
        if key not in self._sites:
            slot = _Slot(None, None, rejected)
            self._sites[key] = self._site(module, layer_name, None, {c: slot for c in self.conditions})
        return self._sites[key]

    def _site(self, module: nn.Module, layer_name: str, original: Any, slots: dict) -> _Site:
        plan = None
        if any(s.kernel is not None for s in slots.values()):
            plan = plan_forward(original, {c: (s.kernel, s.repository) for c, s in slots.items()})
        return _Site(slots, _decisions(module, layer_name, slots, self.device), plan)

    def slot(self, module: nn.Module, layer_name: str, condition: Condition) -> _Slot:
        """What runs at a site of `module` under one `condition` (the compiled path's question)."""
        return self._slot(module, layer_name, original_forward(module), condition)

    def _slot(self, module: nn.Module, layer_name: str, original: Any, condition: Condition) -> _Slot:
        key = (layer_name, original, condition)
        if key not in self._slots:
            self._slots[key] = self._plan(module, layer_name, original, condition)
        return self._slots[key]

    def _plan(self, module: nn.Module, layer_name: str, original: Any, condition: Condition) -> _Slot:
        choice = resolve(layer_name, self.device, condition.mode, capability=self.capability)
        if isinstance(choice, Rejected):
            return _Slot(None, None, choice)
        kernel = self._load(choice)
        if isinstance(kernel, Exception):
            return _Slot(None, choice.repository, Rejected(Reason.LOAD_FAILED, f"{type(kernel).__name__}: {kernel}"))
        problem = kernel_problem(kernel, original, lambda: original_signature(module))
        if problem:
            where = f"kernel layer {layer_name} from {_label(choice.repository)}"
            return _Slot(None, choice.repository, Rejected(Reason.VALIDATION_FAILED, f"{where} does not fit {type(module).__name__}: {problem}"))
        if condition.grad and not getattr(kernel, "has_backward", True):
            return _Slot(None, choice.repository, Rejected(Reason.TRAINING_FALLBACK, "kernel has no backward (has_backward = False)"))
        if condition.compiling and not self.opaque_ok and not getattr(kernel, "can_torch_compile", False):
            return _Slot(None, choice.repository, Rejected(Reason.NOT_COMPILABLE, "kernel has can_torch_compile = False"))
        return _Slot(kernel, choice.repository, None)

    def _load(self, choice: Choice) -> type[nn.Module] | Exception:
        repo = choice.repository
        if repo not in self._loaded:
            try:
                self._loaded[repo] = load_layer(repo, self.backend)
            except Exception as exc:  # every load failure becomes a recorded fallback reason
                logger.warning("kernel_fx: could not load %s: %s", _label(repo), exc)
                self._loaded[repo] = exc
        return self._loaded[repo]


def _raise_on_fallback(path: str, layer_name: str, device: Device, mode: Mode | None, slots: dict, needs_compile: bool) -> None:
    for condition, slot in slots.items():
        if slot.rejected is None or slot.rejected.reason in (Reason.NO_MAPPING, Reason.FILTERED, Reason.DISABLED):
            continue
        if mode is None and condition.compiling != needs_compile:
            continue  # conditions the caller did not ask for do not count as fallbacks
        raise KernelizeError(
            f"Cannot kernelize {path or '<root>'} (layer {layer_name!r}) on device {device} in mode "
            f"{condition.mode!s}: {slot.rejected}. Pass use_fallback=True to keep the original forward."
        )


# -- installing -------------------------------------------------------------------------------


def _install(path: str, module: nn.Module, site: _Site, backend: str) -> tuple[str, tuple[Decision, ...]]:
    previous = installed_forward(module)
    if previous is not None:
        if site.plan is not None and previous.table == site.plan.table and previous.backend == backend:
            return path, site.decisions  # a repeated kernelize: the same forward is already there
        previous.uninstall()  # kernelize is idempotent: always start from the original forward
    if site.plan is not None:
        make_forward(module, site.plan, backend).install()
    return path, site.decisions


def _decisions(module: nn.Module, layer_name: str, slots: dict, device: Device) -> tuple[Decision, ...]:
    groups: dict[tuple, list[Condition]] = {}
    for condition, slot in slots.items():
        groups.setdefault((slot.kernel, slot.repository, slot.rejected), []).append(condition)
    decisions = []
    for (kernel, repo, rejected), conditions in groups.items():
        decisions.append(
            Decision(
                path="",
                layer_name=layer_name,
                module_class=type(module).__name__,
                device=str(device),
                mode="any" if len(conditions) == len(CONDITIONS) else ", ".join(str(c.mode) for c in conditions),
                outcome=Outcome.ORIGINAL if kernel is None else Outcome.KERNEL,
                rejected=rejected,
                **repository_fields(kernel, repo),
            )
        )
    return tuple(decisions)


def repository_fields(kernel: type | None, repo: AnyRepository | None) -> dict[str, Any]:
    """A decision's `repository`, `variant` and `unpinned`: where the kernel came from, when loaded."""
    from .hub.importer import source_of

    source = None if kernel is None else source_of(kernel)
    return {
        "repository": str(source) if source else (_label(repo) if repo is not None else None),
        "variant": source.variant if source else None,
        "unpinned": bool(getattr(repo, "unpinned", False)),
    }


def _label(repo: AnyRepository) -> str:
    for attr in ("repo_id", "repo_path"):
        value = getattr(repo, attr, None)
        if value is not None:
            rev = getattr(repo, "revision", None) or (f"v{repo.version}" if getattr(repo, "version", None) is not None else None)
            return f"{value}@{rev}" if rev else str(value)
    return repr(repo)


# -- the device -------------------------------------------------------------------------------


def _first_tensor(model: nn.Module) -> torch.Tensor | None:
    for module in model.modules():  # one walk, stopping at the first module holding a tensor
        for tensor in (*module._parameters.values(), *module._buffers.values()):
            if tensor is not None:
                return tensor
    return None


def _model_device(model: nn.Module) -> torch.device | str:
    tensor = _first_tensor(model)
    if tensor is None:
        raise KernelFxError(
            f"kernelize cannot infer the device of {type(model).__name__}: it has no parameters or buffers; "
            "pass device='cpu', 'cuda:0' or a torch.device."
        )
    if tensor.device.type == "cuda" and getattr(torch.version, "hip", None):
        return f"rocm:{tensor.device.index}"
    return tensor.device


def _disabled() -> bool:
    return os.environ.get("KERNEL_FX_DISABLE", "").strip().lower() not in ("", "0", "false", "no")
