"""Per transformers family: sites that run a kernel and sites that keep their original (by reason),
eagerly and under hubkernels, with kernel_fx's transformers integration (CPU, no network).

    PYTHONPATH=. python benchmarks/transformers_families.py

Each family is a tiny random model from tests/integrations/test_transformers_families.py, put
through `prepare(model)` and `transformers_mapping()`; the compiled column is one training step
compiled with hubkernels (inner "aot_eager"). Prints a markdown table.
"""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), *(str(Path(__file__).resolve().parents[1] / "tests" / d) for d in ("", "integrations"))]
from sites_by_call import describe  # noqa: E402
from test_transformers_families import FAMILIES, inputs, tiny  # noqa: E402

import kernel_fx  # noqa: E402
from kernel_fx import HubKernelsBackend  # noqa: E402
from kernel_fx.integrations import prepare, transformers_mapping  # noqa: E402


def row(name: str) -> list[str]:
    model = tiny(name).train()
    notes = prepare(model).notes
    ids, mask = inputs()
    with kernel_fx.use_kernel_mapping(transformers_mapping()):
        eager = describe(kernel_fx.report(kernel_fx.kernelize(copy.deepcopy(model), device="cpu")).decisions)
        backend = HubKernelsBackend(inner="aot_eager")
        torch.compile(copy.deepcopy(model), backend=backend)(ids, attention_mask=mask, labels=ids).loss.backward()
    return [name, eager, describe(backend.report.decisions), "; ".join(notes) or "-"]


def main() -> None:
    warnings.filterwarnings("ignore")
    print("| family | eager kernelize: kernel / sites | hubkernels: kernel / sites | not covered |")
    print("|---|---|---|---|")
    for name in FAMILIES:
        torch._dynamo.reset()
        print("| " + " | ".join(row(name)) + " |", flush=True)


if __name__ == "__main__":
    main()
