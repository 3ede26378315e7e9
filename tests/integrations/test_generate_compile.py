"""`generate` compiling with hubkernels, the way transformers users ask for it:
`generate(..., compile_config=CompileConfig(backend="hubkernels"))`.

transformers compiles the decode step itself when the cache is static (on CUDA; `_compile_all_devices`
makes it compile on CPU, as here). The backend's name must resolve after `import kernel_fx`, also from a
source tree without the entry point; the mapping in scope at `generate` decides the kernels; the
`mode` reaches the inner compiler; nothing recompiles per token; the tokens are transformers' own
compile's. Marked `cuda` twins run the same on a GPU, where transformers compiles by default.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch

import kernel_fx
from kernel_fx.integrations import prepare, transformers_mapping

transformers = pytest.importorskip("transformers")

NEW_TOKENS = 6


def tiny_llama(device: str = "cpu") -> torch.nn.Module:
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).to(device).eval()


def compile_config(backend: str = "inductor", mode: str = "reduce-overhead") -> transformers.CompileConfig:
    config = transformers.CompileConfig(backend=backend, mode=mode)
    config._compile_all_devices = True  # compile on CPU too, as transformers does on CUDA
    return config


def generate(model: torch.nn.Module, prompt: torch.Tensor, **kwargs) -> torch.Tensor:
    return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS,
                          min_new_tokens=NEW_TOKENS, do_sample=False, cache_implementation="static", **kwargs)


def unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def test_backend_name_resolves_after_import_without_the_entry_point():
    """A source tree (`PYTHONPATH=.`) has no entry point: torch must still find "hubkernels"."""
    script = textwrap.dedent("""
        import importlib.metadata as metadata

        real = metadata.entry_points
        def no_dynamo_backends(**params):  # what a process sees where kernel_fx is not installed
            found = real(**params)
            return metadata.EntryPoints(()) if params.get("group") == "torch_dynamo_backends" else found
        metadata.entry_points = no_dynamo_backends

        import torch
        import torch._dynamo.backends.registry as registry
        import kernel_fx  # after dynamo: registers at once

        out = torch.compile(lambda x: x * 2, backend="hubkernels")(torch.ones(2))
        print(out.tolist(), registry.lookup_backend("hubkernels") is kernel_fx.hubkernels)
    """)
    before = script.replace("import torch._dynamo.backends.registry as registry\n        import kernel_fx  # after dynamo: registers at once",
                            "import kernel_fx  # before dynamo: registers when dynamo's registry loads\n"
                            "        import torch._dynamo.backends.registry as registry")
    for source in (script, before):
        done = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split("\n")[-2] == "[2.0, 2.0] True"


def test_backend_name_and_entry_point_do_not_collide():
    """Installed: the entry point is there too; the name loads once (no "duplicate name")."""
    from torch._dynamo.backends.registry import _discover_entrypoint_backends, lookup_backend

    _discover_entrypoint_backends()
    assert lookup_backend("hubkernels") is kernel_fx.hubkernels
    assert torch.compile(lambda x: x + 1, backend="hubkernels")(torch.zeros(1)).item() == 1.0


@pytest.mark.slow
def test_generate_with_compile_config_hubkernels_matches_transformers_compile():
    base = tiny_llama()
    prompt = torch.randint(0, 128, (2, 5), generator=torch.Generator().manual_seed(1))
    expected = generate(copy.deepcopy(base), prompt, compile_config=compile_config())  # transformers' own compile
    assert torch.equal(expected, generate(copy.deepcopy(base), prompt, disable_compile=True))

    model = copy.deepcopy(base)
    prepare(model)
    graphs = unique_graphs()
    with kernel_fx.use_kernel_mapping(transformers_mapping()):  # the mapping in scope at generate applies
        tokens = generate(model, prompt, compile_config=compile_config("hubkernels"))
        compiled = unique_graphs() - graphs
        again = generate(model, prompt, compile_config=compile_config("hubkernels"))
    assert torch.equal(tokens, expected) and torch.equal(again, expected)
    assert compiled >= 1 and unique_graphs() - graphs == compiled  # the second generate compiled nothing

    report = kernel_fx.last_compile_report()
    kernels = {d.layer_name for d in report.decisions if d.uses_kernel}
    with kernel_fx.use_kernel_mapping(transformers_mapping()):  # what the same mapping gives eagerly
        eager = kernel_fx.report(kernel_fx.kernelize(copy.deepcopy(model), device="cpu"))
    assert kernels == {d.layer_name for d in eager.decisions if d.uses_kernel}
    assert {"RMSNorm", "AttentionCore", "rotary_pos_emb"} <= kernels  # the MLP's name depends on who marked its class first
    assert {r.inner for r in report.graphs} == {"inductor (mode=reduce-overhead)"}  # the mode reached inductor


def test_generate_without_a_mapping_in_scope_keeps_the_originals():
    model = tiny_llama()
    prepare(model)
    prompt = torch.randint(0, 128, (1, 4), generator=torch.Generator().manual_seed(2))
    config = transformers.CompileConfig(backend="hubkernels", mode="default", options=None)
    config._compile_all_devices = True
    expected = generate(copy.deepcopy(model), prompt, disable_compile=True)
    with kernel_fx.use_kernel_mapping({}, inherit_mapping=False):
        tokens = generate(model, prompt, compile_config=config)
    assert torch.equal(tokens, expected)
    report = kernel_fx.last_compile_report()
    assert report.decisions and not any(d.uses_kernel for d in report.decisions)


@pytest.mark.cuda
def test_generate_compiles_with_hubkernels_and_cuda_graphs_on_cuda():
    """On CUDA transformers compiles by default; `mode="reduce-overhead"` gives CUDA graphs."""
    base = tiny_llama("cuda")
    prompt = torch.randint(0, 128, (2, 5), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    expected = generate(copy.deepcopy(base), prompt)  # transformers' own compile: inductor, reduce-overhead
    model = copy.deepcopy(base)
    prepare(model)
    with kernel_fx.use_kernel_mapping(transformers_mapping()):
        tokens = generate(model, prompt, compile_config=transformers.CompileConfig(backend="hubkernels"))
        graphs = unique_graphs()
        generate(model, prompt, compile_config=transformers.CompileConfig(backend="hubkernels"))
    assert torch.equal(tokens, expected)
    assert unique_graphs() == graphs
    assert {r.inner for r in kernel_fx.last_compile_report().graphs} == {"inductor (mode=reduce-overhead)"}


def test_causal_mask_skipped_under_compile_unless_exporting(monkeypatch):
    """The "kernel_fx" mask gives a plain causal call no mask, as transformers does eagerly, but keeps it
    when exporting (a program must not hard-code is_causal) and whenever padding is given."""
    from kernel_fx.integrations.transformers import causal_skipping_mask

    assert causal_skipping_mask(1, 6, 6) is None
    assert causal_skipping_mask(1, 1, 6) is None  # one query attends to every key
    assert causal_skipping_mask(1, 3, 6, q_offset=3) is not None  # a chunk after a prefix needs the offset mask
    assert causal_skipping_mask(1, 6, 6, local_size=2) is not None
    assert causal_skipping_mask(1, 6, 6, allow_is_causal_skip=False) is not None
    monkeypatch.setattr(torch.compiler, "_is_exporting_flag", True)
    assert causal_skipping_mask(1, 6, 6) is not None
