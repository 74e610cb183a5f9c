"""A notebook with two inline views: SmolLM2's 30 layers x 9 heads generation view and a head view.

    .venv/bin/python benchmarks/notebook_view.py --positions 200 --runs 3
    .venv/bin/python benchmarks/notebook_view.py --positions 248 --runs 3   # the page's cap

Builds the notebook as a kernel would leave it (each view the execute_result of its cell,
synthetic weights), exports it with nbconvert's HTML exporter (basic template: nothing fetched),
opens it in headless Chromium (Debian's chromium via Playwright) and times from navigation to
both frames ready (their script has drawn: body[data-ready='1']). Prints the .ipynb and HTML
sizes and the median time. Targets: < 2 s and < 10 MB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import nbformat
import numpy as np
from nbconvert import HTMLExporter
from playwright.sync_api import sync_playwright

from attnlab import viz

CHROMIUM = "/usr/bin/chromium"


def notebook(n: int, layers: int = 30, heads: int = 9) -> nbformat.NotebookNode:
    rng = np.random.default_rng(0)
    rows = [rng.dirichlet(np.ones(p + 1), size=(layers, heads)).astype(np.float16)
            for p in range(n)]  # (L, H, p + 1) each, as the recorder keeps them
    gen = viz.generation_view_html(rows, [f" t{i}" for i in range(n + 1)], min(40, n),
                                   layers=list(range(layers)), heads=list(range(heads)),
                                   kv_group=[h // 3 for h in range(heads)])
    w = rng.dirichlet(np.ones(12), size=(2, 4, 12))  # (L, H, 12, 12)
    head = viz.head_view_html(w, [f"w{i}" for i in range(12)])
    nb = nbformat.v4.new_notebook()
    for i, page in enumerate((gen, head)):
        cell = nbformat.v4.new_code_cell("view", id=f"c{i}")
        cell.outputs = [nbformat.v4.new_output("execute_result", data=page._repr_mimebundle_(),
                                               execution_count=i + 1)]
        nb.cells.append(cell)
    return nb


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--positions", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    nb = notebook(a.positions)
    with tempfile.TemporaryDirectory() as d:
        ipynb = Path(d) / "views.ipynb"
        nbformat.write(nb, ipynb)
        body, _ = HTMLExporter(template_name="basic").from_notebook_node(nb)
        html = Path(d) / "views.html"
        html.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{body}"
                        "</body></html>", encoding="utf-8")
        times = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
            for _ in range(a.runs):
                page = browser.new_page()
                t = time.perf_counter()
                page.goto(html.as_uri())
                for f in page.query_selector_all("iframe.attnlab-view"):
                    f.content_frame().wait_for_selector("body[data-ready='1']", timeout=60_000)
                times.append(time.perf_counter() - t)
                page.close()
            browser.close()
        print(f"30 layers x 9 heads x {a.positions} positions + a head view: .ipynb "
              f"{ipynb.stat().st_size / 1e6:.2f} MB, HTML export {html.stat().st_size / 1e6:.2f} MB, "
              f"both views ready in {statistics.median(times):.2f} s (median of {a.runs}: "
              f"{', '.join(f'{t:.2f}' for t in times)}); load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
