"""`kernel-fx export` targets for the tests: the tiny demo model, SiluAndMul served by the C++ op
kernel at $KFX_CPP_REPO."""

from __future__ import annotations

import os

import torch

import kernel_fx
from kernel_fx.demo import DemoConfig, build_demo_model

CONFIG = DemoConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, vocab_size=64)


def demo():
    return build_demo_model(CONFIG), (torch.randint(0, CONFIG.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0)),)


def mapping():
    chosen = kernel_fx.default_mapping()
    chosen["SiluAndMul"] = {"cpu": kernel_fx.LocalLayerRepository(os.environ["KFX_CPP_REPO"], layer_name="SiluAndMul")}
    return chosen
