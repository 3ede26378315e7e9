"""Builds in the formats of the Hugging Face `kernels` package 0.19: dotted variant names, SDKs,
zipped builds, packages in a subfolder, and the metadata digest checked at load."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import stat
import sys
import zipfile

import pytest
from hub_helpers import kernel_files, kernels_digest, kernels_variant, run_python, write_repo, zip_bytes

from kernel_fx import get_kernel, get_local_kernel, load_kernel
from kernel_fx.errors import KernelLoadError
from kernel_fx.hub import archives
from kernel_fx.hub.errors import KernelIntegrityError
from kernel_fx.hub.importer import source_of
from kernel_fx.hub.variants import system_info

REPO = "kernels-community/scale"  # trusted by default
SYSTEM = system_info("cpu")
PY = "cpython-{}.{}-abi3".format(*SYSTEM.python)
HERE = f"{SYSTEM.cpu}-{SYSTEM.os}"
DOTTED_ARCH = "torch-{}.{}-cpu-{}-{}".format(*SYSTEM.torch, PY, HERE)


@pytest.fixture
def publish_builds(hub, tmp_path):
    """Publish `{variant: {file: content}}` exactly as given; return the commit."""
    counter = iter(range(1000))

    def _publish(variants: dict[str, dict], repo_id: str = REPO, **kwargs) -> str:
        return hub.publish(repo_id, write_repo(tmp_path / f"build{next(counter)}", variants), **kwargs)

    return _publish


def _variant(tag: str, kernel_id: str, **kwargs) -> dict:
    return kernels_variant(kernel_id, kernel_files(tag), **kwargs)


# -- dotted variant names and SDKs --------------------------------------------------------------


def test_dotted_arch_variant_is_chosen_and_imported(publish_builds, hub):
    other_torch = f"torch-2.{SYSTEM.torch[1] + 1}-cpu-{PY}-{HERE}"
    publish_builds({DOTTED_ARCH: _variant("dotted", "scale_dotted"), other_torch: _variant("other", "scale_other"),
                    "torch-cpu": _variant("noarch", "scale_noarch")})
    kernel = get_kernel(REPO, backend="cpu")
    assert kernel.TAG == "dotted" and source_of(kernel).variant == DOTTED_ARCH
    downloaded = [p for _, p in hub.requests if "/resolve/" in p]
    assert downloaded and all(f"/build/{DOTTED_ARCH}/" in p for p in downloaded)


def test_sdk_variants_load_when_no_torch_build_fits(publish_builds):
    sdk_here = f"sdk-{PY}-{HERE}"
    publish_builds({"torch-cuda": _variant("cuda", "sdk_cuda"), "sdk": _variant("sdk", "sdk_any"),
                    sdk_here: _variant("sdk-compiled", "sdk_compiled")})
    assert get_kernel(REPO, backend="cpu").TAG == "sdk-compiled"  # compiled for this system beats agnostic


# -- zipped builds ------------------------------------------------------------------------------


def test_zipped_build_is_unpacked_into_the_cache_and_imported(publish_builds, hub_env):
    files = {**kernel_files("zipped"), "sub/__init__.py": "VALUE = 7\n"}
    commit = publish_builds({"torch-cpu": kernels_variant("scale_zipped", files, layout="zip")})
    kernel = get_kernel(REPO, backend="cpu")
    assert kernel.TAG == "zipped" and hasattr(kernel.layers, "Scale")
    assert __import__(f"{kernel.__name__}.sub", fromlist=["VALUE"]).VALUE == 7
    assert kernel.__file__.startswith(str(hub_env / ".kernel_fx" / "unzipped"))
    assert source_of(kernel).commit == commit


def test_zipped_build_digest_covers_the_archive(publish_builds):
    variant = kernels_variant("scale_zip_bad", kernel_files("zipped"), layout="zip")
    variant["scale_zip_bad.zip"] = zip_bytes(kernel_files("evil"))  # the archive no longer matches the digest
    publish_builds({"torch-cpu": variant})
    with pytest.raises(KernelIntegrityError, match="modified scale_zip_bad.zip"):
        get_kernel(REPO, backend="cpu")


def test_zipped_local_variant_dir_loads_as_in_kernels(tmp_path):
    repo = write_repo(tmp_path / "local", {"torch-cpu": kernels_variant("scale_zip_local", kernel_files("local-zip"), layout="zip")})
    variant_dir = repo / "build" / "torch-cpu"
    assert get_local_kernel(variant_dir).TAG == "local-zip"  # a variant folder: metadata.json, no __init__.py
    pytest.importorskip("kernels")
    out = run_python(f"""
        import kernels
        print(kernels.get_local_kernel(__import__("pathlib").Path({str(repo)!r}), backend="cpu").TAG)
    """, KERNELS_CACHE=str(tmp_path / "kernels-cache"), HF_HUB_OFFLINE="1")
    assert out.stdout.split()[-1] == "local-zip"  # `kernels` itself reads the same build


def test_damaged_unpacked_copy_is_unpacked_again(tmp_path):
    variant = write_repo(tmp_path, {"v": {"k.zip": zip_bytes({"__init__.py": "X = 1\n", "a.py": "A = 1\n"}),
                                          "metadata.json": '{"id": "k", "build-layout": "zip"}'}}) / "build" / "v"
    metadata = json.loads((variant / "metadata.json").read_text())
    root = tmp_path / "unzipped"
    package = archives.unpacked(variant, metadata, root=root)
    (package / "a.py").write_text("import os  # tampered\n")
    (package / "extra.py").write_text("")
    assert archives.unpacked(variant, metadata, root=root) == package
    assert (package / "a.py").read_text() == "A = 1\n" and not (package / "extra.py").exists()
    assert [p.name for p in root.iterdir()] == [package.name]  # no temporary or stale folders left


def _zip_with(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return buffer.getvalue()


def _link(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


UNSAFE = {
    "parent": ([("__init__.py", b""), ("../evil.py", b"")], "a path outside the archive's folder"),
    "absolute": ([("__init__.py", b""), ("/tmp/evil.py", b"")], "an absolute or non-POSIX path"),
    "backslash": ([("__init__.py", b""), ("..\\evil.py", b"")], "an absolute or non-POSIX path"),
    "symlink": ([("__init__.py", b""), (_link("layers.py"), b"/etc/passwd")], "a link or special file"),
    "twice": ([("__init__.py", b""), ("__init__.py", b"")], "entry '__init__.py' twice"),
    "no-init": ([("layers.py", b"")], "has no __init__.py at its root"),
}


@pytest.mark.parametrize("entries, message", UNSAFE.values(), ids=UNSAFE.keys())
def test_unsafe_archives_are_refused(tmp_path, entries, message):
    variant = tmp_path / "variant"
    variant.mkdir()
    with pytest.warns(UserWarning) if "twice" in message else contextlib.nullcontext():  # zipfile warns too
        (variant / "k.zip").write_bytes(_zip_with(entries))
    with pytest.raises(KernelLoadError, match=message):
        archives.unpacked(variant, {"id": "k", "build-layout": "zip"}, root=tmp_path / "out")
    assert not (tmp_path / "evil.py").exists() and not (tmp_path / "out").exists()  # refused before writing anything


def test_zipped_build_needs_a_plain_id_and_a_known_layout(tmp_path):
    with pytest.raises(KernelLoadError, match="needs an id of letters, digits"):
        archives.archive_of(tmp_path, {"id": "../k", "build-layout": "zip"})
    with pytest.raises(KernelLoadError, match=r"has build-layout='tar'; supported: files, zip"):
        archives.layout({"build-layout": "tar"}, "x")


# -- the package in a subfolder named after the kernel -------------------------------------------


def test_package_in_a_subfolder_named_after_the_kernel(publish_builds):
    files = {f"scale_kit/{name}": source for name, source in kernel_files("subfolder").items()}
    variant = kernels_variant("scale_kit_1", files)
    variant["metadata.json"] = variant["metadata.json"].replace('"name": "scale"', '"name": "scale-kit"')
    publish_builds({"torch-cpu": variant})
    assert get_kernel(REPO, backend="cpu").TAG == "subfolder"


# -- the metadata digest ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_kernels_digest_accepts_the_published_files(publish_builds, algorithm):
    variant = _variant("digest-ok", f"scale_{algorithm}")
    metadata = json.loads(variant["metadata.json"])
    metadata["digest"] = kernels_digest({k: v for k, v in variant.items() if k != "metadata.json"}, algorithm)
    variant["metadata.json"] = json.dumps(metadata)
    variant["metadata.json.sigstore"] = "{}"  # the signature bundle is outside the digest
    publish_builds({"torch-cpu": variant})
    assert get_kernel(REPO, backend="cpu").TAG == "digest-ok"


@pytest.mark.parametrize("damage, word", [("modified", "modified _tag.py"), ("extra", "unexpected extra.py"),
                                          ("missing", "missing _tag.py")])
def test_kernels_digest_refuses_other_files(publish_builds, damage, word):
    variant = _variant("digest", f"scale_{damage}")
    if damage == "modified":
        variant["_tag.py"] = "TAG = 'evil'\n"
    elif damage == "extra":
        variant["extra.py"] = ""
    else:
        del variant["_tag.py"]
    publish_builds({"torch-cpu": variant})
    with pytest.raises(KernelIntegrityError, match=word):
        get_kernel(REPO, backend="cpu")
    assert not [m for m in sys.modules if m.startswith(f"scale_{damage}")]  # nothing ran


def test_kernels_digest_computed_by_kernels_itself_is_accepted(tmp_path, publish_builds):
    rust = pytest.importorskip("kernels._rust")
    files = kernel_files("oracle")
    write_repo(tmp_path / "oracle", {"v": files})
    computed = rust.Digest.hash_variant(rust.DigestAlgorithm.SHA256, tmp_path / "oracle" / "build" / "v")
    variant = kernels_variant("scale_oracle", files, digest=False)
    metadata = json.loads(variant["metadata.json"])
    metadata["digest"] = {"algorithm": "sha256", "files": computed.files}
    variant["metadata.json"] = json.dumps(metadata)
    publish_builds({"torch-cpu": variant})
    assert get_kernel(REPO, backend="cpu").TAG == "oracle"


def test_malformed_digest_is_refused(publish_builds):
    variant = _variant("x", "scale_bad_digest")
    metadata = json.loads(variant["metadata.json"])
    metadata["digest"] = {"algorithm": "md5", "files": {}}
    variant["metadata.json"] = json.dumps(metadata)
    publish_builds({"torch-cpu": variant})
    with pytest.raises(KernelIntegrityError, match="algorithm='md5'"):
        get_kernel(REPO, backend="cpu")


def test_a_hub_kernel_without_digest_loads_with_a_warning(publish_builds, caplog):
    publish_builds({"torch-cpu": _variant("plain", "scale_plain", digest=False)})
    with caplog.at_level(logging.WARNING):
        assert get_kernel(REPO, backend="cpu").TAG == "plain"
    assert any("has no digest in its metadata.json" in r.getMessage() for r in caplog.records)


def test_kernel_fx_lock_needs_no_digest_warning(publish_builds, tmp_path, caplog):
    from hub_helpers import cli

    publish_builds({"torch-cpu": _variant("plain", "scale_plain_locked", digest=False)}, branch="v1")
    lockfile = tmp_path / "kernel-fx.lock"
    assert cli("lock", f"{REPO}@v1", "--backend", "cpu", "-o", str(lockfile)) == 0
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert load_kernel(REPO, lockfile=lockfile, backend="cpu").TAG == "plain"
    assert not [r for r in caplog.records if "digest" in r.getMessage()]  # the lock pins every file


def test_bytecode_is_never_downloaded(publish_builds, hub_env):
    variant = _variant("bytecode", "scale_bytecode")
    variant.update({"evil.pyc": b"\0" * 16, "__pycache__/layers.cpython-311.pyc": b"\0" * 16})
    commit = publish_builds({"torch-cpu": variant})
    assert get_kernel(REPO, backend="cpu").TAG == "bytecode"
    cached = hub_env / "kernels--kernels-community--scale" / "snapshots" / commit / "build" / "torch-cpu"
    assert not (cached / "evil.pyc").exists()
    assert not [p for p in cached.rglob("*.pyc") if "cpython-311.pyc" in p.name and p.stat().st_size == 16]


# -- check_arch: the metadata's backend.archs against the device ----------------------------------


@pytest.mark.parametrize(
    "archs, capability, runs",
    [
        (["8.0"], (8, 6), True), (["8.0"], (9, 0), False), (["9.0a"], (9, 0), True), (["9.0a"], (9, 1), False),
        (["10.0f"], (10, 3), True), (["10.0f"], (12, 0), False), (["8.0+PTX"], (12, 0), True), (["9.0"], (8, 9), False),
        (["7.5", "9.0a"], (9, 0), True), (["compute_90"], (7, 0), True),  # no known format: assume it runs
    ],
)
def test_cuda_arch_rules_of_kernels(archs, capability, runs):
    from kernel_fx.hub.archs import supports_cuda

    assert supports_cuda(archs, capability) is runs


def test_archs_without_that_device_do_not_block(publish_builds):
    variant = kernels_variant("scale_archs", kernel_files("archs"), backend="cuda")  # the digest leaves metadata out
    metadata = json.loads(variant["metadata.json"])
    metadata["backend"]["archs"] = ["1.0a"]  # no GPU here (or not a CUDA one): nothing to check against
    variant["metadata.json"] = json.dumps(metadata)
    publish_builds({"torch-cpu": variant})
    assert get_kernel(REPO, backend="cpu").TAG == "archs"


@pytest.mark.cuda
def test_a_build_for_other_gpus_is_refused_unless_check_arch_is_false(publish_builds):
    from kernel_fx.hub.errors import UnsupportedArchError

    variant = kernels_variant("scale_other_gpu", kernel_files("other-gpu"), backend="cuda", digest=False)
    metadata = json.loads(variant["metadata.json"])
    metadata["backend"]["archs"] = ["1.0a"]
    variant["metadata.json"] = json.dumps(metadata)
    publish_builds({"torch-cuda": variant})
    with pytest.raises(UnsupportedArchError, match=r"not among the build's archs: 1.0a.*check_arch=False") as info:
        get_kernel(REPO)
    assert isinstance(info.value, RuntimeError)  # as in kernels
    assert get_kernel(REPO, check_arch=False).TAG == "other-gpu"


def test_user_agent_goes_with_every_hub_request(publish_builds, hub):
    publish_builds({"torch-cpu": _variant("agent", "scale_agent")})
    get_kernel(REPO, backend="cpu", user_agent={"app": "demo-app"})
    assert hub.user_agents and all("app/demo-app" in agent for agent in hub.user_agents)
