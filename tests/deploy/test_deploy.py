"""kernel_fx.export / package / load_package: the program runs what the report says, the package
carries and checks its kernels, and plain torch runs it in a fresh process."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cli_target
import pytest
import torch
from cpp_kernel import NAMESPACE, make_cpp_kernel_repo

import kernel_fx
from kernel_fx import cli
from kernel_fx.demo import DemoConfig, build_demo_model
from kernel_fx.deploy import PackageIntegrityError
from kernel_fx.deploy.package import library_members

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TINY = DemoConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, vocab_size=64)


def demo_inputs():
    return (torch.randint(0, TINY.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0)),)


def cpp_mapping(repo):
    """The bundled kernels, with SiluAndMul served by the compiled C++ op."""
    mapping = kernel_fx.default_mapping()
    mapping["SiluAndMul"] = {"cpu": kernel_fx.LocalLayerRepository(repo, layer_name="SiluAndMul")}
    return mapping


def op_calls() -> int:
    return torch.ops.kfx_cpp_test.call_count()


@pytest.fixture(scope="module")
def cpp_repo(tmp_path_factory):
    return make_cpp_kernel_repo(tmp_path_factory.mktemp("cpp") / "kfx-cpp-test")


def test_every_site_reported_and_the_program_runs_the_traced_kernels():
    model = build_demo_model(TINY)
    with kernel_fx.use_kernel_mapping(kernel_fx.default_mapping()):
        program = kernel_fx.export(model, demo_inputs())
    record = kernel_fx.export_record(program)
    paths = {path for path, _ in kernel_fx.layers.extensible_modules(model)}
    assert {d.path for d in record.report.decisions} == paths == set(record.sites)
    assert record.report.summary() == "11 sites: 11 kernel, 0 original"
    assert all(s.calls == 1 and s.kernel_nodes == s.nodes > 0 for s in record.sites.values())
    assert [(k.variant, k.compiled) for k in record.kernels] == [("torch-cpu", False)]
    torch.testing.assert_close(program.module()(*demo_inputs()), model(*demo_inputs()))


def test_arguments_and_use_fallback_as_for_kernelize():
    model = build_demo_model(TINY)
    with pytest.raises(kernel_fx.KernelizeError, match="RMSNorm"):
        kernel_fx.export(model, demo_inputs(), use_fallback=False)  # no mapping: raise, as kernelize does
    with pytest.raises(TypeError, match=r"args=Tensor\) needs a tuple"):
        kernel_fx.export(model, demo_inputs()[0])
    with pytest.raises(kernel_fx.KernelFxError, match="no kernel_fx record"):
        kernel_fx.export_record(torch.export.export(model, demo_inputs()))
    assert "_kernel_fx_sites" not in vars(model)  # export kernelized a copy, not the model


def test_dynamic_shapes_pass_through():
    model = build_demo_model(TINY)
    shapes = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=32)},)
    with kernel_fx.use_kernel_mapping(kernel_fx.default_mapping()):
        program = kernel_fx.export(model, demo_inputs(), dynamic_shapes=shapes)
    assert kernel_fx.export_record(program).agrees
    ids = torch.randint(0, TINY.vocab_size, (3, 11))
    torch.testing.assert_close(program.module()(ids), model(ids))


def test_original_sites_say_why_and_hold_no_kernel_code():
    model = build_demo_model(TINY)
    mapping = {"RMSNorm": kernel_fx.default_mapping()["RMSNorm"]}
    with kernel_fx.use_kernel_mapping(mapping):
        record = kernel_fx.export_record(kernel_fx.export(model, demo_inputs()))
    kernels = {d.path for d in record.report.decisions if d.outcome.value == "kernel"}
    assert kernels == {"layers.0.input_layernorm", "layers.1.input_layernorm", "norm"}
    originals = [d for d in record.report.decisions if d.path not in kernels]
    assert {d.rejected.reason.value for d in originals} == {"no mapping"}
    assert all(record.sites[d.path].kernel_nodes == 0 and record.sites[d.path].nodes > 0 for d in originals)
    assert all(record.sites[p].kernel_nodes > 0 for p in kernels)


def test_compiled_op_kernel_is_one_op_per_call(cpp_repo):
    model = build_demo_model(TINY)
    with kernel_fx.use_kernel_mapping(cpp_mapping(cpp_repo)):
        program = kernel_fx.export(model, demo_inputs())
    record = kernel_fx.export_record(program)
    ops = [n for n in program.graph.nodes if n.op == "call_function" and getattr(n.target, "namespace", None) == NAMESPACE]
    assert len(ops) == TINY.num_hidden_layers
    assert {p: dict(s.ops) for p, s in record.sites.items() if s.ops} == {
        f"layers.{i}.mlp.act": {f"{NAMESPACE}::silu_and_mul": 1} for i in range(TINY.num_hidden_layers)}
    compiled = [k for k in record.kernels if k.compiled]
    assert [(k.kernel_id, k.libraries, k.ops) for k in compiled] == [(NAMESPACE, ("_kfx_cpp_test.so",), (f"{NAMESPACE}::silu_and_mul",))]
    before = op_calls()
    torch.testing.assert_close(program.module()(*demo_inputs()), model(*demo_inputs()))
    assert op_calls() - before == TINY.num_hidden_layers


@dataclass
class Exported:
    path: Path
    stdout: str


@pytest.fixture(scope="module")
def cpp_package(cpp_repo, tmp_path_factory):
    """`kernel-fx export` (its `main`, in this process: one AOTInductor warm-up for the whole file) of
    the tiny demo model whose SiluAndMul is the C++ op, with the eager model's inputs and outputs beside it."""
    folder = tmp_path_factory.mktemp("package")
    out = io.StringIO()
    os.environ["KFX_CPP_REPO"] = str(cpp_repo)
    try:
        with contextlib.redirect_stdout(out):
            assert cli.main(["export", "cli_target:demo", "--mapping", "cli_target:mapping", "-o", str(folder / "demo.pt2")]) == 0
    finally:
        del os.environ["KFX_CPP_REPO"]
    model, args = cli_target.demo()
    torch.save({"inputs": args, "expected": model(*args).detach()}, folder / "io.pt")
    return Exported(folder / "demo.pt2", out.getvalue())


FRESH = """
import sys, zipfile, torch
path, io, member, unpack = sys.argv[1:]
torch.ops.load_library(zipfile.ZipFile(path).extract(member, unpack))
model = torch._inductor.aoti_load_package(path)
data = torch.load(io)
before = torch.ops.kfx_cpp_test.call_count()
torch.testing.assert_close(model(*data["inputs"]), data["expected"])
print(torch.ops.kfx_cpp_test.call_count() - before)
assert not any(m.startswith(("kernel_fx", "cpp_kernel")) for m in sys.modules), "kernel_fx was imported"
"""


@pytest.mark.slow
def test_package_runs_in_a_fresh_process_with_plain_torch(cpp_package, tmp_path):
    member, = library_members(cpp_package.path)
    assert member.endswith(f"/kernel_fx/kernels/{NAMESPACE}/_kfx_cpp_test.so")
    inout = cpp_package.path.parent / "io.pt"
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(FRESH), str(cpp_package.path), str(inout), member, str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == str(TINY.num_hidden_layers)  # the C++ op ran once per layer inside the package


@pytest.mark.slow
def test_load_package_checks_the_lock_and_runs_the_kernel(cpp_package):
    with zipfile.ZipFile(cpp_package.path) as archive:
        root = archive.namelist()[0].split("/")[0]
        lock = json.loads(archive.read(f"{root}/extra/kernel_fx/lock.json"))
    entries = {k["kernel_id"]: k for k in lock["kernels"]}
    assert set(entries[NAMESPACE]["files"]) == {"__init__.py", "layers.py", "metadata.json", "_kfx_cpp_test.so"}
    assert entries[NAMESPACE]["variant"].startswith("torch") and entries[NAMESPACE]["variant"].endswith("-cpu-x86_64-linux")
    loaded = kernel_fx.load_package(cpp_package.path)
    data = torch.load(cpp_package.path.parent / "io.pt")
    before = op_calls()
    torch.testing.assert_close(loaded(*data["inputs"]), data["expected"])
    assert op_calls() - before == TINY.num_hidden_layers


@pytest.mark.slow
def test_load_package_refuses_a_tampered_kernel_file(cpp_package, tmp_path):
    tampered = tmp_path / "tampered.pt2"
    with zipfile.ZipFile(cpp_package.path) as source, zipfile.ZipFile(tampered, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith(f"kernels/{NAMESPACE}/layers.py"):
                data += b"\nimport os  # tampered\n"
            target.writestr(item, data)
    with pytest.raises(PackageIntegrityError, match=r"layers\.py has sha256 [0-9a-f]{64}, the lock says"):
        kernel_fx.load_package(tampered)
    added = tmp_path / "added.pt2"
    with zipfile.ZipFile(cpp_package.path) as source, zipfile.ZipFile(added, "w") as target:
        for item in source.infolist():
            target.writestr(item, source.read(item))
            if item.filename.endswith(f"kernels/{NAMESPACE}/layers.py"):
                target.writestr(item.filename.replace("layers.py", "../../../evil.py"), b"import os\n")
    with pytest.raises(PackageIntegrityError, match=r"files its lock does not name: \.\./\.\./\.\./evil\.py"):
        kernel_fx.load_package(added, unpack_to=tmp_path / "unpacked")
    assert not list(tmp_path.rglob("evil.py"))


@pytest.mark.slow
def test_cli_export_prints_the_report_and_how_to_load(cpp_package):
    out = cpp_package.stdout
    assert "11 sites: 11 kernel, 0 original" in out
    assert "kfx_cpp_test::silu_and_mul x1" in out and " NO\n" not in out
    assert f"torch.ops.load_library(zipfile.ZipFile('{cpp_package.path}').extract(" in out


PY_OP_KERNEL = '''
import torch
from torch import nn

CALLS = []


@torch.library.custom_op("kfx_py_test::silu_and_mul", mutates_args=())
def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    CALLS.append(tuple(x.shape))
    d = x.shape[-1] // 2
    return torch.nn.functional.silu(x[..., :d]) * x[..., d:]


@silu_and_mul.register_fake
def _(x):
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


class SiluAndMul(nn.Module):
    has_backward = False
    can_torch_compile = True

    def forward(self, x):
        return torch.ops.kfx_py_test.silu_and_mul(x)
'''

PY_FRESH = """
import sys, torch, kernel_fx
model = kernel_fx.load_package(sys.argv[1])
data = torch.load(sys.argv[2])
torch.testing.assert_close(model(data["x"]), data["expected"])
kernel = sys.modules["kfx_py_test__kfx.layers"]  # imported by load_package from the package's verified files
print(len(kernel.CALLS), kernel.__file__.startswith(sys.argv[3]))
"""


@pytest.mark.slow
def test_a_python_custom_op_kernel_is_packed_and_imported_by_load_package(kernel_repo, tmp_path):
    from kernel_fx.demo import SiluAndMul

    repo = kernel_repo({"torch-cpu": {"layers.py": PY_OP_KERNEL}}, kernel_id="kfx_py_test")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), SiluAndMul())
    x = torch.randn(3, 4)
    with kernel_fx.use_kernel_mapping({"SiluAndMul": {"cpu": kernel_fx.LocalLayerRepository(repo, layer_name="SiluAndMul")}}):
        program = kernel_fx.export(model, (x,))
    record = kernel_fx.export_record(program)
    assert record.sites["1"].ops == {"kfx_py_test::silu_and_mul": 1}
    (lock,) = record.kernels
    assert lock.packed and not lock.compiled
    assert "registered in Python" in record.render()
    path = kernel_fx.package(program, tmp_path / "py.pt2")
    with torch.no_grad():
        torch.save({"x": x, "expected": model(x)}, tmp_path / "io.pt")
    unpack = tmp_path / "unpacked"
    fresh = PY_FRESH.replace("kernel_fx.load_package(sys.argv[1])", f"kernel_fx.load_package(sys.argv[1], unpack_to={str(unpack)!r})")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(fresh), str(path), str(tmp_path / "io.pt"), str(unpack)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["1", "True"]  # the kernel's op ran once, from the package's copy


def test_a_kernel_the_checks_refuse_keeps_its_original_in_the_program(kernel_repo):
    """The shared pipeline decides export too: a kernel with the wrong output shape is refused
    ("wrong output", by the `wrong_output` check) and the program traces the original."""
    from models import Scale, scale_source

    repo = kernel_repo({"torch-cpu": {"layers.py": scale_source(forward="return (x * self.weight * self.factor)[:1]")}})
    model = torch.nn.Sequential(Scale(8), Scale(8))
    x = torch.randn(4, 8)
    with kernel_fx.use_kernel_mapping({"Scale": {"cpu": kernel_fx.LocalLayerRepository(repo, layer_name="Scale")}}), \
            pytest.warns(kernel_fx.KernelFallbackWarning, match="wrong output"):
        program = kernel_fx.export(model, (x,))
    record = kernel_fx.export_record(program)
    assert {(d.path, d.outcome.value, d.rejected.reason.value, d.rejected.check) for d in record.report.decisions} == {
        ("0", "original", "wrong output", "wrong_output"), ("1", "original", "wrong output", "wrong_output")}
    assert all(s.kernel_nodes == 0 and s.nodes > 0 for s in record.sites.values())
    torch.testing.assert_close(program.module()(x), model(x))
    with kernel_fx.use_kernel_mapping({"Scale": {"cpu": kernel_fx.LocalLayerRepository(repo, layer_name="Scale")}}):
        unchecked = kernel_fx.export(model, (x,), check_outputs=False)  # no check: the kernel is traced, as reported
    assert kernel_fx.export_record(unchecked).report.summary() == "2 sites: 2 kernel, 0 original"
    assert unchecked.module()(x).shape == (1, 8)


@pytest.mark.cuda
def test_bundled_triton_kernels_export_package_and_load_on_cuda(tmp_path):
    """On CUDA the bundled kernels are Triton (and torch custom ops): exported, packaged by AOTInductor, loaded."""
    model = build_demo_model(TINY).to("cuda", torch.bfloat16)
    inputs = tuple(x.to("cuda") for x in demo_inputs())
    with kernel_fx.use_kernel_mapping(kernel_fx.default_mapping()):
        program = kernel_fx.export(model, inputs, device="cuda")
    record = kernel_fx.export_record(program)
    assert record.report.summary() == "11 sites: 11 kernel, 0 original"
    assert {k.variant for k in record.kernels} == {"torch-cuda"}
    expected = model(*inputs)
    torch.testing.assert_close(program.module()(*inputs), expected, atol=2e-2, rtol=2e-2)
    path = kernel_fx.package(program, tmp_path / "demo-cuda.pt2")
    loaded = kernel_fx.load_package(path)
    torch.testing.assert_close(loaded(*inputs), expected, atol=2e-2, rtol=2e-2)
