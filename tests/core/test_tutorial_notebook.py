"""docs/tutorial.ipynb: generated from docs/tutorial.md (a drift fails here), executed top to
bottom with a real Jupyter kernel (nbclient + ipykernel), every cell's output checked as the
page's test checks the page's, and its inline views rendered in headless Chromium from
nbconvert's HTML export (offline: nothing is fetched)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CHROMIUM = "/usr/bin/chromium"


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_notebook_is_generated_from_the_page() -> None:
    gen = _load(DOCS / "tutorial_notebook.py", "tutorial_notebook")
    have = (DOCS / "tutorial.ipynb").read_text(encoding="utf-8")
    assert have == gen.text(gen.build((DOCS / "tutorial.md").read_text(encoding="utf-8"))), \
        "docs/tutorial.ipynb has drifted from docs/tutorial.md: run python docs/tutorial_notebook.py"
    nb = json.loads(have)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(code) >= 15 and all("attnlab" in c["metadata"] for c in code)


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> tuple[Any, Path]:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    folder = tmp_path_factory.mktemp("notebook")
    nb = nbformat.read(DOCS / "tutorial.ipynb", as_version=4)
    # ipykernel sets FORCE_COLOR for what cells start, so rich would draw for a colour terminal;
    # the page shows (and its test checks) the plain-text rendering: a setup cell, not checked
    nb.cells.insert(0, nbformat.v4.new_code_cell(
        "import os\nfor k in ('FORCE_COLOR', 'CLICOLOR_FORCE'):\n    os.environ.pop(k, None)", id="setup"))
    bin_dir = Path(sys.executable).parent
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "100",
           "TMPDIR": str(folder), "OMP_NUM_THREADS": "1",
           # the kernel imports this checkout's attnlab, as the tests do
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                                         resources={"metadata": {"path": str(folder)}})
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb, folder


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_and_prints_what_the_page_shows(executed) -> None:
    page_test = _load(ROOT / "tests" / "core" / "test_docs_tutorial.py", "page_test")
    nb, folder = executed
    checked = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, errors
        meta = cell.metadata.get("attnlab")
        # as the page's test: a Python block's stdout, a shell block's stdout and stderr
        names = ("stdout",) if meta and meta["kind"] == "python" else ("stdout", "stderr")
        printed = "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name in names)
        if meta:
            source = cell.source.removeprefix("%%bash\n")
            page_test._check_shown(meta["shown"], printed, meta["kind"], source)
            checked += 1
    assert checked >= 15
    assert (folder / "runs" / "numbers-tiny" / "model.safetensors").is_file()
    # the two pages the page ends cells with are shown inline, each in its own frame
    frames = [o for c in nb.cells for o in c.get("outputs", [])
              if o.output_type == "execute_result" and "text/html" in o.data]
    assert [json.dumps(o.data["text/html"])[:8] for o in frames] == ['"<iframe'] * 2
    assert all(o.data["text/plain"].startswith("<attnlab ") for o in frames)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no chromium at {CHROMIUM}")
def test_inline_views_render_in_the_exported_notebook(executed, tmp_path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    nbconvert = pytest.importorskip("nbconvert")
    nb, _ = executed
    body, _ = nbconvert.HTMLExporter(template_name="basic").from_notebook_node(nb)
    path = tmp_path / "tutorial.html"  # the basic template: no CDN scripts, nothing to fetch
    path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{body}</body></html>",
                    encoding="utf-8")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            requests: list[str] = []
            errors: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.as_uri())
            frames = page.query_selector_all("iframe.attnlab-view")
            assert [f.get_attribute("data-view") for f in frames] == ["head", "model"]
            for f in frames:
                inner = f.content_frame()
                assert inner is not None
                inner.wait_for_selector("body[data-ready='1']", timeout=10_000)
                # each frame is its own document: its own #ids, its own script globals
                assert inner.evaluate("document.querySelectorAll('script').length") >= 1
            # the model view draws its 72 thumbnails; the head view its token columns
            model = frames[1].content_frame()
            assert model.evaluate("document.querySelectorAll('canvas').length") >= 72
            assert errors == [] and [u for u in requests if not u.startswith("file:")] == []
        finally:
            browser.close()
