"""Write notebooks/quickstart.ipynb from the cells below (kept as code so diffs stay readable).

    .venv/bin/python scripts/make_notebook.py
"""

from pathlib import Path

import nbformat

CELLS = [
    ("md", """# kernel_fx quick start

Mark a layer as extensible, map it to a kernel, kernelize eagerly or compile with the
`hubkernels` backend, read the report, and plot the timings. Runs offline on a CPU: the kernels
come from the repository bundled with kernel_fx, loaded exactly like a Hub kernel repo."""),
    ("code", """import copy, torch
from torch import nn
import kernel_fx
from kernel_fx import LocalLayerRepository, kernelize, use_kernel_mapping
from kernel_fx.kernels import bundled_repo_path
torch.manual_seed(0)"""),
    ("md", """## 1. Mark a layer
The model author decorates the class; its eager behaviour does not change."""),
    ("code", """@kernel_fx.use_kernel_forward_from_hub("RMSNorm")
class MyRMSNorm(nn.Module):
    def __init__(self, hidden, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        variance = hidden_states.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states.float() * torch.rsqrt(variance + self.variance_epsilon)).to(hidden_states.dtype)

model = nn.Sequential(nn.Linear(64, 64), MyRMSNorm(64), nn.Linear(64, 64), MyRMSNorm(64)).eval()
x = torch.randn(8, 64)
expected = model(x)"""),
    ("md", """## 2. Map kernels and kernelize
A mapping names, per layer and device, the repository that provides the kernel."""),
    ("code", """mapping = {"RMSNorm": {"cpu": LocalLayerRepository(bundled_repo_path(), layer_name="RMSNorm"),
                       "cuda": LocalLayerRepository(bundled_repo_path(), layer_name="RMSNorm")}}
kernelized = copy.deepcopy(model)
with use_kernel_mapping(mapping):
    kernelize(kernelized)
torch.testing.assert_close(kernelized(x), expected)
print(kernel_fx.report(kernelized))"""),
    ("md", """## 3. Compile with the `hubkernels` backend
The same mapping drives a graph pass over dynamo's FX graph; the rest goes to the inner compiler."""),
    ("code", """with use_kernel_mapping(mapping):
    compiled = torch.compile(copy.deepcopy(model), backend="hubkernels", options={"inner": "aot_eager"})
    with torch.no_grad():
        out = compiled(x)
torch.testing.assert_close(out, expected)
print(kernel_fx.last_compile_report())"""),
    ("md", """## 3b. The report as a page
In Jupyter a report displays as HTML (`_repr_html_`): the sites table (click a header to sort, pick a
reason to filter), charts, and each compiled graph's substituted calls (click one to see the original
ops beside the kernel's). `report.to_html()` gives the same as one self-contained file."""),
    ("code", """compiled_report = kernel_fx.last_compile_report()
compiled_report"""),
    ("code", """from pathlib import Path

Path("report.html").write_text(compiled_report.to_html(title="quick start: hubkernels"))
print("wrote report.html:", Path("report.html").stat().st_size, "bytes; open it in a browser")"""),
    ("md", """## 4. The demo model, timed
`kernel-fx demo` runs the bundled Llama-style model eager, kernelized and compiled; here its
timing table is plotted."""),
    ("code", """from kernel_fx.demo.run import run_demo_model
result = run_demo_model(layers=1, compile=False)
print(result.timing_table())"""),
    ("code", """import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(5, 2.5))
ax.barh([r.name for r in result.runs], [r.median_ms for r in result.runs])
ax.set_xlabel(f"median ms per forward ({result.device})")
fig.tight_layout()"""),
]


def main() -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src) for kind, src in CELLS]
    path = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
    path.parent.mkdir(exist_ok=True)
    nbformat.write(nb, path)


if __name__ == "__main__":
    main()
