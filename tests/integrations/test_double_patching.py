"""A model the Hugging Face `kernels` package already kernelized (as transformers' `from_pretrained`
does by default): kernel_fx gives the forwards `kernels` installed back before installing its own,
says so in the report, and transformers' `train()`/`eval()` no longer re-kernelize over them."""

from __future__ import annotations

import copy

import pytest
import torch

import kernel_fx
from kernel_fx.integrations import transformers_mapping
from kernel_fx.kernels import bundled_repo_path
from kernel_fx.originals import installed_forward

kernels = pytest.importorskip("kernels")
transformers = pytest.importorskip("transformers")


def tiny_llama() -> torch.nn.Module:
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=128)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def kernelized_by_kernels(model: torch.nn.Module) -> torch.nn.Module:
    transformers_mapping()["RMSNorm"]["cpu"].load(backend="cpu")  # both loaders import the same repo in one process
    repo = kernels.LocalLayerRepository(repo_path=bundled_repo_path(), layer_name="RMSNorm")  # the bundled repo loads in kernels too
    with kernels.use_kernel_mapping({"RMSNorm": {"cpu": repo}}):
        kernels.kernelize(model, mode=kernels.Mode.INFERENCE, device="cpu")
    return model


def test_forwards_kernels_installed_are_given_back_and_reported():
    model = kernelized_by_kernels(tiny_llama())
    assert "_kernel_repo" in vars(model.model.norm)
    reference = tiny_llama()
    ids = torch.randint(0, 128, (2, 5))
    with kernel_fx.use_kernel_mapping(transformers_mapping()):
        kernel_fx.kernelize(model, device="cpu")
    report = kernel_fx.report(model)
    assert sorted(note.split(":")[0] for note in report.notes) == [
        "model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm", "model.norm"]
    assert "kernel_fx/kernels (RMSNorm)" in report.notes[0] and "note: model.norm" in report.render()
    assert "_kernel_repo" not in vars(model.model.norm)
    assert installed_forward(model.model.norm).previous is None  # kernel_fx's forward wraps the original, not kernels'
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)


def test_transformers_use_kernels_is_turned_off_so_eval_keeps_kernel_fx_forwards():
    model = tiny_llama()
    model.set_use_kernels(True)  # what from_pretrained does by default; no CPU entries: installs nothing here
    assert model.use_kernels
    with kernel_fx.use_kernel_mapping(transformers_mapping()):
        kernel_fx.kernelize(model, device="cpu")
    assert not model.use_kernels
    model.train()
    model.eval()  # while use_kernels is on, transformers re-kernelizes with `kernels` here
    assert installed_forward(model.model.norm) is not None


def test_a_model_kernels_never_touched_has_no_notes():
    model = tiny_llama()
    with kernel_fx.use_kernel_mapping(transformers_mapping()):
        kernel_fx.kernelize(copy.deepcopy(model), device="cpu")
        clone = kernel_fx.kernelize(copy.deepcopy(model), device="cpu")
    assert kernel_fx.report(clone).notes == []
