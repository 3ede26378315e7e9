"""The eager path end to end, with kernel repos built in temp dirs."""

import copy
import io
import subprocess
import sys
import textwrap

import pytest
import torch
from models import ADD_SCALED, TWICE, AddScaled, Host, Net, Scale, scale_source, twice
from torch import nn

import kernel_fx
from kernel_fx import (
    CUDAProperties,
    Device,
    KernelFxError,
    KernelizeError,
    LocalLayerRepository,
    Mode,
    Outcome,
    Reason,
    kernelize,
    unkernelize,
    use_kernel_mapping,
)


def scale_repo(kernel_repo, has_backward=True, can_compile=True):
    root = kernel_repo({"torch-cpu": {"layers.py": scale_source(has_backward, can_compile)}})
    return LocalLayerRepository(root, layer_name="Scale")


def kernelized_net(kernel_repo):
    """A Net kernelized for inference with the counting Scale kernel, and that kernel's repository."""
    repo = scale_repo(kernel_repo)
    model = Net()
    with use_kernel_mapping({"Scale": {"cpu": repo}}):
        kernelize(model, mode=Mode.INFERENCE)
    return model, repo


def calls(repo):
    return sys.modules[type_of(repo).__module__].CALLS


def type_of(repo):
    return repo.load(backend="cpu")


def single(model, **kwargs):
    decisions = kernel_fx.report(model).decisions
    return [d for d in decisions if all(getattr(d, k) == v for k, v in kwargs.items())]


def test_kernel_runs_per_instance_and_class_is_untouched(kernel_repo):
    repo = scale_repo(kernel_repo)
    model, other = Scale(4), Scale(4)
    with use_kernel_mapping({"Scale": {"cpu": repo}}):
        assert kernelize(model, mode=Mode.INFERENCE) is model
    x = torch.randn(3, 4)
    torch.testing.assert_close(model(x), other(x))
    assert len(calls(repo)) == 1
    other(x)
    assert len(calls(repo)) == 1, "another instance of the class must keep its forward"
    assert "forward" not in vars(other) and Scale.forward.__qualname__ == "Scale.forward"


def test_train_eval_and_no_grad_switch_without_rekernelizing(kernel_repo):
    repo = scale_repo(kernel_repo, has_backward=False)
    model, reference = Scale(4), Scale(4)
    with use_kernel_mapping({"Scale": {"cpu": repo}}):
        kernelize(model)
    x = torch.randn(3, 4)
    counted = calls(repo)

    model.train()
    out = model(x)
    out.sum().backward()
    reference(x).sum().backward()
    assert len(counted) == 0, "training: the kernel has no backward, the original runs"
    torch.testing.assert_close(model.weight.grad, reference.weight.grad)

    model.eval()
    model(x)
    assert len(counted) == 0, "eval with grad enabled and parameters requiring grad: autograd records"
    with torch.no_grad():
        model(x)
    assert len(counted) == 1
    model.weight.requires_grad_(False)
    model(x)
    assert len(counted) == 2, "nothing requires grad: autograd does not record"
    model(x.requires_grad_())
    assert len(counted) == 2, "an input requiring grad makes autograd record"
    model.train()
    with torch.no_grad():
        model(x)
    assert len(counted) == 2, "a training module never runs a kernel without backward"


def test_kernel_with_backward_gives_the_original_gradients(kernel_repo):
    repo = scale_repo(kernel_repo, has_backward=True)
    model = Scale(4)
    reference = copy.deepcopy(model)
    with use_kernel_mapping({"Scale": {"cpu": repo}}):
        kernelize(model)
    x = torch.randn(3, 4, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    model(x).pow(2).sum().backward()
    reference(xr).pow(2).sum().backward()
    assert len(calls(repo)) == 1
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(model.weight.grad, reference.weight.grad)


def test_two_input_layer_keeps_argument_order(kernel_repo):
    root = kernel_repo({"torch-cpu": {"layers.py": ADD_SCALED}})
    model = AddScaled()
    with use_kernel_mapping({"AddScaled": {"cpu": LocalLayerRepository(root, layer_name="AddScaled")}}):
        kernelize(model, mode=Mode.INFERENCE, device="cpu")
    x, y = torch.randn(3), torch.randn(3)
    torch.testing.assert_close(model(x, y), x + 10 * y)
    torch.testing.assert_close(model(y=y, x=x), x + 10 * y)
    assert single(model, outcome=Outcome.KERNEL)


def test_modes_fixed_at_kernelize_follow_the_anchor(kernel_repo):
    repo = scale_repo(kernel_repo, has_backward=False, can_compile=False)
    with use_kernel_mapping({"Scale": {"cpu": repo}}):
        inference = kernelize(Scale(4), mode=Mode.INFERENCE)
        training = kernelize(Scale(4), mode=Mode.TRAINING)
        compiled = kernelize(Scale(4), mode=Mode.INFERENCE, needs_torch_compile=True)
    assert single(inference, outcome=Outcome.KERNEL)
    assert single(training)[0].rejected.reason is Reason.TRAINING_FALLBACK
    assert single(compiled)[0].rejected.reason is Reason.NOT_COMPILABLE
    assert single(compiled)[0].mode == "INFERENCE|TORCH_COMPILE"


def test_needs_torch_compile_without_mode_uses_only_compilable_kernels(kernel_repo):
    repo = scale_repo(kernel_repo, can_compile=False)
    model = Scale(4)
    with use_kernel_mapping({"Scale": {"cpu": repo}}):
        kernelize(model, needs_torch_compile=True)
    with torch.no_grad():
        model(torch.randn(4))
    assert len(calls(repo)) == 0
    assert {d.rejected.reason for d in single(model)} == {Reason.NOT_COMPILABLE}


def test_is_idempotent_and_unkernelize_restores(kernel_repo):
    repo = scale_repo(kernel_repo)
    model = Net()
    with use_kernel_mapping({"Scale": {"cpu": repo}}):
        kernelize(model)
        forward = model.scale.forward
        kernelize(model)
    assert model.scale.forward is forward and forward.previous is None, "a repeat keeps the forward, never wraps it"
    other = scale_repo(kernel_repo, has_backward=False)
    with use_kernel_mapping({"Scale": {"cpu": other}}):
        kernelize(model)
    assert model.scale.forward is not forward and model.scale.forward.previous is None
    unkernelize(model)
    assert "forward" not in vars(model.scale)
    with pytest.raises(KernelFxError, match="has not been kernelized"):
        kernel_fx.report(model)


def test_filter_fn_excludes_sites_by_path(kernel_repo):
    repo = scale_repo(kernel_repo)
    model = nn.ModuleDict({"keep": Scale(4), "skip": Scale(4)})
    with use_kernel_mapping({"Scale": {"cpu": repo}}):
        kernelize(model, mode=Mode.INFERENCE, filter_fn=lambda module, fqn: fqn != "skip")
    assert single(model, path="keep")[0].outcome is Outcome.KERNEL
    skipped = single(model, path="skip")[0]
    assert skipped.outcome is Outcome.ORIGINAL and skipped.rejected.reason is Reason.FILTERED
    assert "forward" not in vars(model["skip"])


def test_disable_environment_variable(kernel_repo, monkeypatch):
    repo = scale_repo(kernel_repo)
    monkeypatch.setenv("KERNEL_FX_DISABLE", "1")
    model = Scale(4)
    with use_kernel_mapping({"Scale": {"cpu": repo}}):
        kernelize(model, use_fallback=False)
    assert single(model)[0].rejected.reason is Reason.DISABLED


def test_decisions_name_path_layer_repository_device_and_mode(kernel_repo):
    model, repo = kernelized_net(kernel_repo)
    by_path = {d.path: d for d in kernel_fx.report(model).decisions}
    scale, add = by_path["scale"], by_path["add"]
    assert (scale.layer_name, scale.module_class, scale.device, scale.mode) == ("Scale", "Scale", "cpu", "INFERENCE")
    assert scale.repository == str(repo.repo_path) and scale.variant == "torch-cpu"
    assert add.rejected.reason is Reason.NO_MAPPING and add.outcome is Outcome.ORIGINAL


def test_unpinned_hub_repositories_are_flagged():
    hub = kernel_fx.LayerRepository("org/k", layer_name="Scale")
    assert hub.unpinned and not kernel_fx.LayerRepository("org/k", layer_name="Scale", version=1).unpinned
    with pytest.raises(kernel_fx.MappingError, match="give one of them"):
        kernel_fx.LayerRepository("org/k", layer_name="Scale", revision="main", version=1)


# -- every failure kind, with use_fallback True and False ----------------------------------------

BAD_INIT = '''
from torch import nn
class Scale(nn.Module):
    def __init__(self):
        super().__init__()
    def forward(self, x):
        return x
'''
EXTRA_MEMBER = '''
from torch import nn
class Scale(nn.Module):
    def helper(self):
        return 1
    def forward(self, x):
        return x
'''
RENAMED_ARG = '''
from torch import nn
class Scale(nn.Module):
    def forward(self, hidden):
        return hidden
'''
EXTRA_DEFAULT = '''
from torch import nn
class Scale(nn.Module):
    def forward(self, x, eps=1e-6):
        return x
'''
KEYWORD_ONLY = '''
from torch import nn
class Scale(nn.Module):
    def forward(self, *, x):
        return x
'''
IMPORT_ERROR = '''
raise ImportError("this kernel needs libfoo")
'''


def failing_mapping(kind, kernel_repo, tmp_path):
    """A mapping for Scale that fails in the way named by `kind`, and the reason expected."""
    def local(source, layer="Scale"):
        return LocalLayerRepository(kernel_repo({"torch-cpu": {"layers.py": source}}), layer_name=layer)

    cuda_range = Device("cuda", properties=CUDAProperties(min_capability=80, max_capability=90))
    cases = {
        "no-device-entry": ({"cuda": local(scale_source())}, Reason.NO_DEVICE_ENTRY, None),
        "no-mode-entry": ({"cpu": {Mode.INFERENCE: local(scale_source())}}, Reason.NO_MODE_ENTRY, Mode.TRAINING),
        "training-fallback": ({"cpu": local(scale_source(has_backward=False))}, Reason.TRAINING_FALLBACK, Mode.TRAINING),
        "not-compilable": (
            {"cpu": local(scale_source(can_compile=False))}, Reason.NOT_COMPILABLE, Mode.INFERENCE | Mode.TORCH_COMPILE
        ),
        "missing-path": ({"cpu": LocalLayerRepository(tmp_path / "nowhere", layer_name="Scale")}, Reason.LOAD_FAILED, None),
        "no-variant": ({"cpu": LocalLayerRepository(kernel_repo({"torch-cuda": {"layers.py": RENAMED_ARG}}), layer_name="Scale")}, Reason.LOAD_FAILED, None),
        "import-error": ({"cpu": local(IMPORT_ERROR)}, Reason.LOAD_FAILED, None),
        "missing-layer": ({"cpu": local(RENAMED_ARG, layer="Nope")}, Reason.LOAD_FAILED, None),
        "has-init": ({"cpu": local(BAD_INIT)}, Reason.VALIDATION_FAILED, None),
        "extra-member": ({"cpu": local(EXTRA_MEMBER)}, Reason.VALIDATION_FAILED, None),
        "renamed-arg": ({"cpu": local(RENAMED_ARG)}, Reason.VALIDATION_FAILED, None),
        "extra-default": ({"cpu": local(EXTRA_DEFAULT)}, Reason.VALIDATION_FAILED, None),
        "keyword-only": ({"cpu": local(KEYWORD_ONLY)}, Reason.VALIDATION_FAILED, None),
        "capability-unavailable": ({cuda_range: local(RENAMED_ARG)}, Reason.CAPABILITY_UNAVAILABLE, None),
    }
    return cases[kind]


DETAILS = {
    "no-variant": "No build variant",
    "import-error": "this kernel needs libfoo",
    "missing-layer": "has no layer 'Nope'; its layers are: Scale",
    "has-init": "defines __init__",
    "extra-member": "has members helper",
    "renamed-arg": "forward parameter 1 is hidden (positional or keyword), the original's is x",
    "extra-default": "forward takes (self, x, eps), the original takes (self, x)",
    "keyword-only": "keyword-only",
    "missing-path": "has no build/ directory",
}
KINDS = ["no-device-entry", "no-mode-entry", "training-fallback", "not-compilable", "missing-path", "no-variant",
         "import-error", "missing-layer", "has-init", "extra-member", "renamed-arg", "extra-default", "keyword-only",
         "capability-unavailable"]


@pytest.mark.parametrize("kind", KINDS)
def test_failures_fall_back_with_their_reason(kind, kernel_repo, tmp_path):
    entry, reason, mode = failing_mapping(kind, kernel_repo, tmp_path)
    device = "cuda" if kind == "capability-unavailable" else None
    model = Scale(4)
    x = torch.randn(2, 4)
    expected = model(x)
    with use_kernel_mapping({"Scale": entry}):
        kernelize(model, mode=mode or Mode.INFERENCE, device=device)
    decision = single(model)[0]
    assert decision.outcome is Outcome.ORIGINAL and decision.rejected.reason is reason
    assert DETAILS.get(kind, "") in decision.rejected.detail
    torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_failures_raise_without_fallback_and_leave_the_model_alone(kind, kernel_repo, tmp_path):
    entry, reason, mode = failing_mapping(kind, kernel_repo, tmp_path)
    device = "cuda" if kind == "capability-unavailable" else None
    model = Scale(4)
    with use_kernel_mapping({"Scale": entry}):
        with pytest.raises(KernelizeError) as raised:
            kernelize(model, mode=mode or Mode.INFERENCE, device=device, use_fallback=False)
    message = str(raised.value)
    assert "layer 'Scale'" in message and reason.value in message and "in mode" in message
    assert ("on device cuda" if device else "on device cpu") in message
    assert "forward" not in vars(model)


def test_cpu_only_torch_with_a_cuda_mapping_does_not_crash(kernel_repo):
    source = scale_source()
    repo = LocalLayerRepository(kernel_repo({"torch-universal": {"layers.py": source}}), layer_name="Scale")
    ranged = Device("cuda", properties=CUDAProperties(min_capability=80, max_capability=90))
    model = Net()
    with use_kernel_mapping({"Scale": {"cuda": repo, ranged: repo}}):
        kernelize(model)  # model on cpu: cuda entries are simply not for it
        assert single(model, path="scale")[0].rejected.reason is Reason.NO_DEVICE_ENTRY
        if not torch.cuda.is_available():
            kernelize(model, device=torch.device("cuda", 1))  # a plain cuda entry needs no capability
            assert single(model, path="scale")[0].outcome is Outcome.KERNEL


def test_device_is_required_for_models_without_tensors():
    with pytest.raises(KernelFxError, match="no parameters or buffers; pass device="):
        kernelize(AddScaled())
    kernelize(AddScaled(), device="cpu")


# -- function layers ----------------------------------------------------------------------------

def test_a_function_kernelized_in_one_model_stays_original_elsewhere(kernel_repo):
    repo = LocalLayerRepository(kernel_repo({"torch-cpu": {"layers.py": TWICE}}), layer_name="Twice")
    a, b = Host(), Host()
    with use_kernel_mapping({"Twice": {"cpu": repo}}):
        kernelize(a, mode=Mode.INFERENCE)
    x = torch.ones(1)
    assert a(x).item() == 1002.0
    assert b(x).item() == 2.0 and twice(x).item() == 2.0
    assert single(a)[0].path == "twice"


def test_function_kernel_signature_is_checked_against_the_function(kernel_repo):
    source = TWICE.replace("forward(self, x)", "forward(self, y)").replace("x * 2", "y * 2")
    repo = LocalLayerRepository(kernel_repo({"torch-cpu": {"layers.py": source}}), layer_name="Twice")
    with use_kernel_mapping({"Twice": {"cpu": repo}}):
        model = kernelize(Host(), mode=Mode.INFERENCE)
    assert single(model)[0].rejected.reason is Reason.VALIDATION_FAILED


# -- copies and persistence -----------------------------------------------------------------------

def test_deepcopy_keeps_the_kernels(kernel_repo):
    model, repo = kernelized_net(kernel_repo)
    clone = copy.deepcopy(model)
    assert clone.scale.forward.module is clone.scale
    clone(torch.randn(2, 4))
    assert len(calls(repo)) == 1
    assert kernel_fx.report(clone).summary() == kernel_fx.report(model).summary()


def test_save_and_load_keep_the_kernels_in_a_fresh_process(kernel_repo, tmp_path):
    model, _ = kernelized_net(kernel_repo)
    path = tmp_path / "model.pt"
    torch.save(model, path)
    script = textwrap.dedent(f"""
        import sys, torch, warnings
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
        warnings.simplefilter("error")
        model = torch.load({str(path)!r}, weights_only=False)
        model(torch.randn(2, 4))
        print(len(sys.modules[model.scale.forward.fn.__module__].CALLS))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_load_warns_loudly_when_the_kernel_is_gone(kernel_repo, tmp_path):
    import shutil

    model, repo = kernelized_net(kernel_repo)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    shutil.rmtree(repo.repo_path)
    buffer.seek(0)
    script_model = None
    # The import cache of this process still holds the kernel; a fresh process cannot find it.
    path = tmp_path / "model.pt"
    path.write_bytes(buffer.getvalue())
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
        model = torch.load({str(path)!r}, weights_only=False)
        print(type(model.scale.forward).__name__)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "RuntimeWarning" in out.stderr and "ORIGINAL forward" in out.stderr
    assert script_model is None
