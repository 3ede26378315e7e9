"""The layers API of the Hugging Face `kernels` package 0.19 that kernel_fx accepts too: kernel
conditions, `KernelizeFallback`, function repositories, `get_kernelized_layers`, the switches,
repository options, and errors that are `ValueError`s where `kernels` raises one."""

from __future__ import annotations

import warnings

import pytest
import torch
from models import TWICE, Host, Scale, scale_source
from torch import nn

import kernel_fx
from kernel_fx import (
    KernelFallbackWarning,
    KernelizeError,
    KernelizeFallback,
    LayerNotFoundError,
    LayerRepository,
    LocalFuncRepository,
    LocalLayerRepository,
    LockedLayerRepository,
    MappingError,
    Mode,
    Reason,
    SettingError,
    get_kernelized_layers,
    kernelize,
    use_kernel_mapping,
)
from kernel_fx.hub.errors import LockfileError

x = torch.randn(2, 4)


def scale_repo(kernel_repo, has_backward=True, name="Scale"):
    return LocalLayerRepository(kernel_repo({"torch-cpu": {"layers.py": scale_source(has_backward)}}), layer_name=name)


def reasons(model):
    return {d.path: (d.rejected.reason if d.rejected else None) for d in kernel_fx.report(model).decisions}


# -- condition= and kernel_condition --------------------------------------------------------------


@kernel_fx.use_kernel_forward_from_hub("Scale", condition=lambda module: module.factor > 0)
class ConditionalScale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4))
        self.factor = factor

    def forward(self, x):
        return x * self.weight * self.factor


def test_condition_is_asked_per_instance(kernel_repo):
    model = nn.Sequential(ConditionalScale(2.0), ConditionalScale(-1.0))
    with use_kernel_mapping({"Scale": {"cpu": scale_repo(kernel_repo)}}):
        kernelize(model, mode=Mode.INFERENCE, device="cpu", use_fallback=False)  # a false condition is no failure
    assert sorted(get_kernelized_layers(model).layers) == ["0"]
    decision = next(d for d in kernel_fx.report(model).decisions if d.path == "1")
    assert decision.rejected.reason is Reason.FILTERED and "kernel_condition returned False" in decision.rejected.detail


def test_condition_is_the_kernels_class_attribute_and_replace_takes_it(kernel_repo):
    class Norm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4))
            self.factor = 1.0
            self.enabled = False

        def forward(self, x):
            return x * self.weight * self.factor

    kernel_fx.replace_kernel_forward_from_hub(Norm, "Scale", condition=lambda module: module.enabled)
    assert Norm.kernel_condition(Norm()) is False  # a staticmethod, as `kernels` sets it
    on, off = Norm(), Norm()
    on.enabled = True
    model = nn.Sequential(on, off)
    with use_kernel_mapping({"Scale": {"cpu": scale_repo(kernel_repo)}}):
        kernelize(model, mode=Mode.INFERENCE, device="cpu")
    assert reasons(model) == {"0": None, "1": Reason.FILTERED}


def test_condition_on_a_function_is_asked_with_its_module(kernel_repo):
    @kernel_fx.use_kernel_forward_from_hub("Twice", condition=lambda module: False)
    def twice(x):
        return 2 * x

    @kernel_fx.use_kernelized_func(twice)
    class Holder(nn.Module):
        def forward(self, x):
            return self.twice(x)

    repo = LocalLayerRepository(kernel_repo({"torch-cpu": {"layers.py": TWICE}}), layer_name="Twice")
    model = Holder()
    with use_kernel_mapping({"Twice": {"cpu": repo}}):
        kernelize(model, mode=Mode.INFERENCE, device="cpu")
    assert reasons(model) == {"twice": Reason.FILTERED}
    torch.testing.assert_close(model(x), 2 * x)


def test_condition_must_be_callable():
    with pytest.raises(MappingError, match="condition=3 must be a function of the module"):
        kernel_fx.use_kernel_forward_from_hub("Scale", condition=3)


# -- use_fallback and KernelizeFallback -------------------------------------------------------------


def test_no_mapping_raises_without_fallback_as_kernels_does():
    with pytest.raises(KernelizeError, match=r"layer 'Scale'.*no mapping: no kernel mapped for layer 'Scale'") as raised:
        kernelize(nn.Sequential(Scale(4)), mode=Mode.INFERENCE, device="cpu", use_fallback=False)
    assert isinstance(raised.value, ValueError)


def test_kernelize_fallback_default_allows_missing_mappings_but_not_load_failures(kernel_repo):
    model = nn.Sequential(Scale(4))
    kernelize(model, mode=Mode.INFERENCE, device="cpu", use_fallback=KernelizeFallback.DEFAULT)
    assert reasons(model) == {"0": Reason.NO_MAPPING}
    broken = scale_repo(kernel_repo, name="NoSuchLayer")
    with use_kernel_mapping({"Scale": {"cpu": broken}}):
        with pytest.raises(KernelizeError, match="could not load: LayerNotFoundError"):
            kernelize(model, mode=Mode.INFERENCE, device="cpu", use_fallback=KernelizeFallback.DEFAULT)
        kernelize(model, mode=Mode.INFERENCE, device="cpu", use_fallback=KernelizeFallback.ALL)
    assert reasons(model) == {"0": Reason.LOAD_FAILED}


def test_kernelize_fallback_flags_name_their_cases(kernel_repo):
    entry = {"cuda": scale_repo(kernel_repo)}  # no cpu entry
    with use_kernel_mapping({"Scale": entry}):
        kernelize(nn.Sequential(Scale(4)), device="cpu", mode=Mode.INFERENCE, use_fallback=KernelizeFallback.NO_DEVICE)
        with pytest.raises(KernelizeError, match="no entry for device"):
            kernelize(nn.Sequential(Scale(4)), device="cpu", mode=Mode.INFERENCE, use_fallback=KernelizeFallback.NO_LAYER)


def test_use_fallback_must_be_a_bool_or_a_flag():
    with pytest.raises(MappingError, match="use_fallback='yes' must be True, False or a kernel_fx.KernelizeFallback"):
        kernelize(nn.Sequential(Scale(4)), device="cpu", use_fallback="yes")


def test_a_training_entry_without_backward_warns_and_says_why(kernel_repo):
    model = nn.Sequential(Scale(4)).train()
    repo = scale_repo(kernel_repo, has_backward=False)
    with use_kernel_mapping({"Scale": {"cpu": {Mode.TRAINING: repo}}}):
        with pytest.warns(KernelFallbackWarning, match=r"kernel has no backward .*, but the mapping's TRAINING entry for 'Scale' names it"):
            kernelize(model, mode=Mode.TRAINING, device="cpu")
    (decision,) = kernel_fx.report(model).decisions
    assert decision.rejected.reason is Reason.TRAINING_FALLBACK and "TRAINING entry" in decision.rejected.detail


def test_a_fallback_entry_without_backward_is_an_ordinary_fallback(kernel_repo):
    with use_kernel_mapping({"Scale": {"cpu": scale_repo(kernel_repo, has_backward=False)}}):
        with warnings.catch_warnings():
            warnings.simplefilter("error", KernelFallbackWarning)
            kernelize(nn.Sequential(Scale(4)), mode=Mode.TRAINING, device="cpu")


def test_an_unusable_lock_is_an_error_even_with_fallback():
    class BadLock:
        def load(self):
            raise LockfileError("kernels.lock has no entry for 'org/scale'")

    with use_kernel_mapping({"Scale": {"cpu": BadLock()}}):
        with pytest.raises(LockfileError, match="no entry for 'org/scale'"):
            kernelize(nn.Sequential(Scale(4)), device="cpu", use_fallback=True)


def test_locked_repository_reads_its_lock_when_made(tmp_path, monkeypatch):
    with pytest.raises(LockfileError, match="does not exist"):
        LockedLayerRepository("org/scale", layer_name="Scale", lockfile=tmp_path / "kernels.lock")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LockfileError, match="No kernel-fx.lock or kernels.lock in"):
        LockedLayerRepository("org/scale", layer_name="Scale")


# -- the switches ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variable, value", [("DISABLE_KERNEL_MAPPING", "1"), ("KERNEL_FX_DISABLE", "on")])
def test_switches_restore_the_original_forwards(kernel_repo, monkeypatch, variable, value):
    model = nn.Sequential(Scale(4))
    with use_kernel_mapping({"Scale": {"cpu": scale_repo(kernel_repo)}}):
        kernelize(model, device="cpu")
        assert "forward" in vars(model[0])
        monkeypatch.setenv(variable, value)
        kernelize(model, device="cpu", use_fallback=False)
    assert "forward" not in vars(model[0])
    (decision,) = kernel_fx.report(model).decisions
    assert decision.rejected.reason is Reason.DISABLED and decision.rejected.detail == f"{variable} is set"


@pytest.mark.parametrize("value, disabled", [("0", False), ("off", False), ("No", False), ("false", False), ("", False),
                                             ("1", True), ("TRUE", True), ("yes", True), ("on", True)])
def test_kernel_fx_disable_values(monkeypatch, value, disabled):
    from kernel_fx.planner import is_disabled

    monkeypatch.setenv("KERNEL_FX_DISABLE", value)
    assert is_disabled() is disabled


@pytest.mark.parametrize("variable, value", [("KERNEL_FX_DISABLE", "2"), ("KERNEL_FX_DISABLE", "disabled"), ("DISABLE_KERNEL_MAPPING", "yes")])
def test_unreadable_switch_values_are_errors_naming_them(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingError, match=rf"{variable}='{value}'") as raised:
        kernelize(nn.Sequential(Scale(4)), device="cpu")
    assert isinstance(raised.value, ValueError)


# -- repositories ---------------------------------------------------------------------------------


def test_layer_repository_takes_user_agent_and_check_arch():
    a = LayerRepository("org/scale", layer_name="Scale", version=1, user_agent={"app": "x"})
    b = LayerRepository("org/scale", layer_name="Scale", version=1)
    assert a == b and hash(a) == hash(b)  # the user agent is not part of what is loaded
    assert LayerRepository("org/scale", layer_name="Scale", version=1, check_arch=False) != b
    with pytest.raises(MappingError, match="check_arch='no' must be True or False"):
        LocalLayerRepository("/kernels", layer_name="Scale", check_arch="no")


FUNCTIONS = '''
import torch

def scale(x, weight, factor):
    return torch.mul(x, weight * factor)
scale.can_torch_compile = True
'''


@kernel_fx.use_kernel_forward_from_hub("scale_fn")
class ScaleFn(nn.Module):
    def forward(self, x, weight, factor):
        return x * weight * factor


def test_func_repository_wraps_a_top_level_function(kernel_repo):
    root = kernel_repo({"torch-cpu": {"__init__.py": FUNCTIONS}})
    with pytest.warns(DeprecationWarning, match="LocalFuncRepository is deprecated"):
        repo = LocalFuncRepository(root, func_name="scale")
    model = nn.Sequential(ScaleFn())
    with use_kernel_mapping({"scale_fn": {"cpu": repo}}):
        kernelize(model, mode=Mode.INFERENCE | Mode.TORCH_COMPILE, device="cpu", use_fallback=False)
    assert get_kernelized_layers(model).layers["0"].repo == repo
    torch.testing.assert_close(model[0](x, torch.ones(4), 2.0), 2 * x)


def test_func_repository_names_a_missing_function(kernel_repo):
    root = kernel_repo({"torch-cpu": {"__init__.py": FUNCTIONS}})
    with pytest.warns(DeprecationWarning):
        repo = LocalFuncRepository(root, func_name="nope")
    with pytest.raises(LayerNotFoundError, match="has no function 'nope'; its functions are: scale") as raised:
        repo.load(backend="cpu")
    assert isinstance(raised.value, ValueError)


def test_use_kernel_func_from_hub_makes_a_module(kernel_repo):
    with pytest.warns(DeprecationWarning, match="use_kernel_func_from_hub is deprecated"):
        @kernel_fx.use_kernel_func_from_hub("Twice")
        def twice(x):
            return 2 * x

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.fn = twice  # registered as a submodule, as in `kernels`' example

        def forward(self, x):
            return self.fn(x)

    model = Model()
    repo = LocalLayerRepository(kernel_repo({"torch-cpu": {"layers.py": TWICE}}), layer_name="Twice")
    with use_kernel_mapping({"Twice": {"cpu": repo}}):
        kernelize(model, mode=Mode.INFERENCE, device="cpu")
    torch.testing.assert_close(model(x), 2 * x + 1000)


# -- get_kernelized_layers ------------------------------------------------------------------------


def test_get_kernelized_layers_keys_functions_by_host_and_name(kernel_repo):
    repo = LocalLayerRepository(kernel_repo({"torch-cpu": {"layers.py": TWICE}}), layer_name="Twice")
    model = nn.Sequential(Host())
    with use_kernel_mapping({"Twice": {"cpu": repo}}):
        kernelize(model, mode=Mode.INFERENCE, device="cpu")
    found = get_kernelized_layers(model)
    assert found.layers == {} and list(found.funcs) == [("0", "twice")]
    assert found.funcs[("0", "twice")].repo == repo and found.funcs[("0", "twice")].module is model[0].twice
    kernel_fx.unkernelize(model)
    assert get_kernelized_layers(model).funcs == {}


def test_get_kernelized_layers_with_mode_none_names_the_kernel_for_the_current_state(kernel_repo):
    inference, training = scale_repo(kernel_repo), scale_repo(kernel_repo)
    model = nn.Sequential(Scale(4)).eval()
    with use_kernel_mapping({"Scale": {"cpu": {Mode.INFERENCE: inference, Mode.TRAINING: training}}}):
        kernelize(model, device="cpu")
    assert get_kernelized_layers(model).layers["0"].repo == inference
    model.train()
    assert get_kernelized_layers(model).layers["0"].repo == training
