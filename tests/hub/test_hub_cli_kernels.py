"""The `kernel-fx` equivalents of `kernels` 0.19's `describe-api`, `variants --only-compatible` and `cache ls`."""

from __future__ import annotations

import json

from hub_helpers import cli, kernel_files, kernels_variant, write_repo

from kernel_fx.hub.variants import system_info

LAYERS = """
from torch import nn

FLAG = True

class Scale(nn.Module):
    has_backward = False
    can_torch_compile = FLAG

    def forward(self, x):
        return x

class _Private(nn.Module):
    pass
"""
INIT = "from . import layers\n\ndef scale(x):\n    return x\n\nimport os\nraise SystemExit('kernel code ran')\n"


def test_describe_api_reads_the_source_without_running_it(tmp_path, capsys):
    repo = write_repo(tmp_path / "k", {"torch-cpu": {"__init__.py": INIT, "layers.py": LAYERS}})
    assert cli("describe-api", str(repo), "--json") == 0
    described = json.loads(capsys.readouterr().out)
    assert described["variant"] == "torch-cpu" and described["from"] == "source"
    assert described["functions"] == [{"name": "scale"}]
    assert described["layers"] == [{"name": "Scale", "attributes": {"has_backward": False, "can_torch_compile": None}}]


def test_describe_api_prefers_symbols_json_and_reads_a_zipped_hub_build(tmp_path, hub, capsys):
    symbols = {"schema_version": 1, "functions": [{"name": "fast_scale"}],
               "layers": [{"name": "Scale", "attributes": {"has_backward": True, "can_torch_compile": True}}]}
    root = write_repo(tmp_path / "src", {"torch-cpu": {**kernels_variant("described_zip", kernel_files("z"), layout="zip"),
                                                       "symbols.json": json.dumps(symbols)}})
    hub.publish("org/described", root, branch="v1")
    assert cli("describe-api", "org/described", "--version", "1") == 0
    out = capsys.readouterr().out
    assert "org/described@v1" in out and "from symbols.json" in out
    assert "fast_scale" in out and "Scale  has_backward=True  can_torch_compile=True" in out
    (tmp_path / "src" / "build" / "torch-cpu" / "symbols.json").unlink()
    hub.publish("org/described2", root, branch="v1")
    assert cli("describe-api", "org/described2", "--version", "1", "--json") == 0
    layers = json.loads(capsys.readouterr().out)["layers"]  # read inside the zip: Scale from the test kernel's layers.py
    assert [la["name"] for la in layers] == ["Scale"]


def test_variants_only_compatible_and_cache_ls(publish, capsys, hub_env):
    major, minor = system_info().torch
    publish("org/scale", {"torch-cpu": "cpu", f"torch{major}{minor + 1}-cxx11-cu130-x86_64-linux": "cuda"}, branch="v1")
    assert cli("variants", "org/scale", "--version", "1", "--only-compatible", "--json", "--backend", "cpu") == 0
    variants = json.loads(capsys.readouterr().out)["variants"]
    assert [v["variant"] for v in variants] == ["torch-cpu"] and variants[0]["status"] == "chosen"

    assert cli("cache", "ls") == 0
    assert "No cached kernels" in capsys.readouterr().out
    from kernel_fx import get_kernel

    get_kernel("org/scale", version=1, backend="cpu", trust_remote_code=True)
    assert cli("cache", "ls", "--json") == 0
    (cached,) = json.loads(capsys.readouterr().out)["kernels"]
    assert (cached["repo_id"], cached["refs"], cached["variants"]) == ("org/scale", ["v1"], ["torch-cpu"])
    assert cli("cache", "ls") == 0
    assert "kernel/org/scale" in capsys.readouterr().out
