"""Views display themselves in notebooks: pages as sandboxed iframes, figures as PNGs."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest

from attnlab import viz

HOSTILE = '</script><img src=x onerror="window.__pwned=1">'
TOKENS = ["[CLS]", "the", HOSTILE, "cat", "&amp;"]


def _weights(layers: int = 2, heads: int = 3, n: int = len(TOKENS)) -> np.ndarray:
    return np.random.default_rng(3).dirichlet(np.ones(n), size=(layers, heads, n))  # (L, H, n, n)


def _rows(layers: int = 2, heads: int = 3, n: int = len(TOKENS)) -> list[np.ndarray]:
    rng = np.random.default_rng(4)
    return [rng.dirichlet(np.ones(p + 1), size=(layers, heads)) for p in range(n)]  # (L, H, p+1)


def _pages() -> dict[str, viz.HtmlPage]:
    w = _weights()
    return {
        "head": viz.head_view_html(w, TOKENS),
        "model": viz.model_view_html(w, TOKENS),
        "compare": viz.compare_view_html(w, w, TOKENS, TOKENS),
        "generation": viz.generation_view_html(_rows(), TOKENS, 2, layers=[0, 1], heads=[0, 1, 2],
                                               kv_group=[0, 0, 1]),
        "share": viz.token_share_html(TOKENS[2:], np.full((3, 2), 0.5), prompt_labels=TOKENS[:2],
                                      highlight=[1], layers=[0, 1]),
    }


def test_every_page_is_the_same_str_and_shows_as_a_sandboxed_iframe() -> None:
    for view, page in _pages().items():
        assert isinstance(page, str) and isinstance(page, viz.HtmlPage) and page.view == view
        bundle = page._repr_mimebundle_()
        frame = bundle["text/html"]
        assert frame == page._repr_html_()
        # One element, whose srcdoc is the escaped page: no token reaches the notebook as markup.
        assert frame.startswith("<iframe ") and frame.endswith("</iframe>")
        assert frame.count("<") == 2 and HOSTILE not in frame
        assert 'sandbox="allow-scripts allow-downloads"' in frame  # no allow-same-origin
        srcdoc = re.search(r'srcdoc="([^"]*)"', frame)
        assert srcdoc is not None and html.unescape(srcdoc[1]) == str(page)
        # text/plain is a one-line summary, not the whole page (IPython's formatter agrees)
        assert bundle["text/plain"].startswith(f"<attnlab {view} view") and len(bundle["text/plain"]) < 200
        formatter = pytest.importorskip("IPython.core.formatters").DisplayFormatter()
        data, _ = formatter.format(page)
        assert data == bundle


def test_every_figure_shows_as_png() -> None:
    w = _weights()
    figures = [
        viz.heatmap(w[0, 0], TOKENS),
        viz.mask_plot(np.tri(5, dtype=bool)),
        viz.layer_head_grid(w, TOKENS, patterns=True),  # the classifier's grid
        viz.alignment_plot(w[0, 0], source_tokens=TOKENS, target_tokens=TOKENS),
        viz.head_view_figure(w[0], TOKENS),
    ]
    for fig in figures:
        assert isinstance(fig, viz.ViewFigure)
        assert fig._repr_png_().startswith(b"\x89PNG\r\n\x1a\n")


def test_show_displays_pages_and_figures_and_refuses_other_objects(monkeypatch) -> None:
    display = pytest.importorskip("IPython.display")
    from IPython.core.interactiveshell import InteractiveShell

    page = _pages()["head"]
    with pytest.raises(ValueError, match=r"^show: expected to run in a notebook .* path= instead"):
        viz.show(page)  # a plain process: not a page printed as text
    shown: list[object] = []
    monkeypatch.setattr(display, "display", lambda obj: shown.append(obj))
    monkeypatch.setattr(InteractiveShell, "initialized", classmethod(lambda cls: True))
    assert viz.show(page, height=300) is page
    assert 'height: 300px' in shown[-1]._repr_html_() and HOSTILE not in shown[-1]._repr_html_()
    fig = viz.heatmap(_weights()[0, 0], TOKENS)
    viz.show(fig)
    assert shown[-1] is fig
    from matplotlib.figure import Figure

    plain = Figure()  # a figure built elsewhere is drawn as an image
    plain.add_subplot().plot([0, 1])
    viz.show(plain)
    assert shown[-1].data.startswith(b"\x89PNG")
    with pytest.raises(ValueError, match=r"^obj: expected an attnlab view .* got ndarray"):
        viz.show(np.zeros(3))
    with pytest.raises(ValueError, match=r"^height: expected an int of at least 50"):
        viz.show(page, height=0)


def test_a_view_too_big_for_the_notebook_gets_the_file_caps_advice() -> None:
    with pytest.raises(ValueError, match=r"^weights: expected at most 256 tokens per side.*pass weights\["):
        viz.head_view_html(np.full((1, 1, 300, 300), 1 / 300), [str(i) for i in range(300)])


@pytest.mark.browser
@pytest.mark.skipif(not __import__("os").path.exists("/usr/bin/chromium"), reason="no chromium")
def test_two_views_on_one_page_both_render_and_a_hostile_token_stays_text(tmp_path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    pages = _pages()
    two = [pages["head"], pages["generation"]]  # as two notebook cells' outputs
    path = tmp_path / "notebook.html"
    path.write_text("<!DOCTYPE html><html><body>" + "".join(p._repr_html_() for p in two)
                    + "</body></html>", encoding="utf-8")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
        try:
            page = browser.new_page()
            dialogs: list[str] = []
            errors: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.as_uri())
            frames = [f.content_frame() for f in page.query_selector_all("iframe.attnlab-view")]
            assert len(frames) == 2
            for f in frames:
                f.wait_for_selector("body[data-ready='1']", timeout=10_000)
                assert f.evaluate("window.__pwned") is None
                assert f.evaluate("document.images.length") == 0
                assert HOSTILE in f.evaluate("document.body.textContent")  # shown as text
            assert page.evaluate("window.__pwned") is None and dialogs == [] and errors == []
            # sandboxed without same-origin: the notebook cannot be reached from a view
            assert frames[0].evaluate("(() => { try { return !!parent.document; } "
                                      "catch (e) { return 'blocked'; } })()") == "blocked"
        finally:
            browser.close()
