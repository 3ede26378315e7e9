"""Size and load time of the HTML report of a large model, in the system Chromium.

    python benchmarks/bench_html_report.py [--model demo|llama] [--layers 32] [--out DIR]

Builds the model (the demo's decoder, or transformers' LlamaForCausalLM with tiny widths), runs
`kernel_fx.explain` on it (eager kernelize, then hubkernels with the inner compiler "eager"),
renders both reports as one page, and opens it from disk in Chromium (Playwright) five times:
the medians of the navigation's load event and of first contentful paint (and, alternating, the
load event of a blank local page: the machine's floor), then the time the
page's script takes to apply a reason filter, a text filter and a sort (each with a forced
layout). Prints one JSON line; with --out also writes the page there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kernel_fx  # noqa: E402

TIMED_IN_PAGE = """([what, value]) => {
  const root = document.querySelector('.kfx');
  const start = performance.now();
  if (what === 'sort') { root.querySelector('table.sites thead button').click(); }
  else {
    const el = root.querySelector(`[data-filter="${what}"]`);
    el.value = value; el.dispatchEvent(new Event('input'));
  }
  document.body.offsetHeight;  // force the layout the change causes
  return [performance.now() - start, root.querySelectorAll('table.sites tbody tr:not([hidden])').length];
}"""


def build(model: str, layers: int) -> tuple[torch.nn.Module, torch.Tensor, dict]:
    if model == "demo":
        from kernel_fx.demo.model import DemoConfig, build_demo_model

        config = DemoConfig(num_hidden_layers=layers)
        return build_demo_model(config).eval(), torch.randint(0, config.vocab_size, (1, 16)), kernel_fx.default_mapping()
    from transformers import LlamaConfig, LlamaForCausalLM

    from kernel_fx.integrations.llama import llama_mapping, mark_llama

    mark_llama()
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128)
    return LlamaForCausalLM(config).eval(), torch.randint(0, 128, (1, 16)), llama_mapping()


def page_for(model_name: str, layers: int) -> tuple[str, dict]:
    model, ids, mapping = build(model_name, layers)
    start = time.perf_counter()
    with kernel_fx.use_kernel_mapping(mapping):
        explained = kernel_fx.explain(model, ids)
    explain_s = time.perf_counter() - start
    start = time.perf_counter()
    reports = {"kernelize": explained.eager, "hubkernels": explained.compiled}
    page = kernel_fx.html.render_page(reports, title=f"{model_name}, {layers} layers", mapping=mapping)
    facts = {"explain_s": round(explain_s, 2), "render_s": round(time.perf_counter() - start, 3),
             "rows": sum(len(r.decisions) for r in reports.values()),
             "diffs": sum(len(g.site_diffs) for g in explained.compiled.graphs), "graphs": len(explained.compiled.graphs),
             "summary": {k: r.summary() for k, r in reports.items()}}
    return page, facts


def in_browser(path: Path, loads: int = 5) -> dict:
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    timings: dict[str, list[float]] = {"load_ms": [], "first_paint_ms": [], "blank_page_load_ms": []}
    blank = path.with_name("blank.html")  # what opening any local page costs on this machine
    blank.write_text("<!DOCTYPE html><title>blank</title><p>blank</p>")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        for _ in range(loads):
            for page, key in ((path, "load_ms"), (blank, "blank_page_load_ms")):
                tab = browser.new_page(viewport={"width": 1280, "height": 900})
                tab.goto(page.as_uri(), wait_until="load")
                timings[key].append(tab.evaluate("() => performance.getEntriesByType('navigation')[0].loadEventEnd"))
                paint = tab.evaluate("() => (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || null")
                if paint is not None and key == "load_ms":
                    timings["first_paint_ms"].append(paint)
                tab.close()
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        tab.goto(path.as_uri(), wait_until="load")
        reason = tab.evaluate("() => [...document.querySelectorAll('[data-filter=reason] option')].map(o => o.value).filter(v => v && v !== '-')[0] || '-'")
        steps = {"filter_reason": ("reason", reason), "filter_text": ("text", "layers.1"), "sort": ("sort", "")}
        result = {name: tab.evaluate(TIMED_IN_PAGE, list(args)) for name, args in steps.items()}
        browser.close()
    out = {k: round(statistics.median(v), 1) for k, v in timings.items() if v}
    out.update({f"{k}_ms": round(v[0], 1) for k, v in result.items()})
    out.update({f"{k}_rows_shown": v[1] for k, v in result.items() if k != "sort"})
    out["chromium"] = executable
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("demo", "llama"), default="demo")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="directory to keep the page in")
    args = parser.parse_args()
    import kernel_fx.html  # noqa: F401  (the page module, for render_page)

    page, facts = page_for(args.model, args.layers)
    folder = args.out or Path(tempfile.mkdtemp())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"report-{args.model}-{args.layers}.html"
    path.write_text(page, encoding="utf-8")
    facts.update({"model": args.model, "layers": args.layers, "page_bytes": len(page.encode()), "page": str(path)})
    facts.update(in_browser(path))
    print(json.dumps(facts))  # noqa: T201 - a benchmark script's output


if __name__ == "__main__":
    main()
