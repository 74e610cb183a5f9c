"""The HTML views in a real browser: Debian's chromium driven by Playwright, headless."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attnlab.viz import compare_view_html, head_view_html, model_view_html

CHROMIUM = "/usr/bin/chromium"
HOSTILE = '</script><img src=x onerror="window.__pwned=1;alert(1)">'
TOKENS = ["[CLS]", "the", "cat", "sat", HOSTILE, "<b>mat</b>", "[SEP]"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"no chromium at {CHROMIUM} (apt-get install -y chromium)"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


class Watched:
    """A page plus everything that must not happen on it: dialogs, requests, errors."""

    def __init__(self, browser: Any, path: Path) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900},
                                           accept_downloads=True)
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.url = path.resolve().as_uri()
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready='1']", timeout=10_000)

    def assert_clean(self) -> None:
        assert self.dialogs == []
        assert self.errors == []
        assert self.requests == [self.url]  # nothing fetched: offline by construction
        assert self.page.evaluate("window.__pwned") is None
        assert self.page.evaluate("document.images.length") == 0

    def close(self) -> None:
        self.context.close()


def weights(layers: int = 2, heads: int = 3, n: int = len(TOKENS)) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.dirichlet(np.full(n, 0.7), size=(layers, heads, n))  # (L, H, n, n)


def table_values(page: Any) -> dict[int, list[float]]:
    """Head position -> the weights listed in the detail table, one per row."""
    out: dict[int, list[float]] = {}
    for cell in page.query_selector_all("#weights tbody td.val"):
        out.setdefault(int(cell.get_attribute("data-h")), []).append(float(cell.inner_text()))
    return out


def test_head_view_hover_weights_hostile_token_and_png(browser, tmp_path) -> None:
    w = weights()
    path = tmp_path / "head.html"
    head_view_html(w, TOKENS, path=path, title="head view test")
    v = Watched(browser, path)
    page = v.page
    page.select_option("#layer", "1")
    page.hover("#q-tokens .tok[data-i='2']")
    assert page.inner_text("#detail-token") == "cat"
    shown = table_values(page)
    assert sorted(shown) == [0, 1, 2]
    for h, values in shown.items():
        np.testing.assert_allclose(values, w[1, h, 2], atol=5e-4)  # 3 decimals shown

    # Hovering a key lists the attention it receives: a column of the matrix.
    page.hover("#k-tokens .tok[data-j='5']")
    np.testing.assert_allclose(table_values(page)[0], w[1, 0, :, 5], atol=5e-4)

    # The hostile token is plain text everywhere and nothing ran.
    hostile = page.locator("#q-tokens .tok[data-i='4']")
    assert hostile.text_content() == HOSTILE
    page.hover("#q-tokens .tok[data-i='4']")
    assert page.inner_text("#detail-token") == HOSTILE
    assert page.locator("#k-tokens .tok[data-j='5']").text_content() == "<b>mat</b>"
    assert page.evaluate("document.querySelectorAll('b, script:not([id]) ~ img').length") == 0

    # Unchecking a head drops its column; clicking pins a token across mouse moves.
    page.uncheck("input[data-h='1']")
    page.click("#q-tokens .tok[data-i='3']")
    page.hover("#k-tokens .tok[data-j='0']")
    assert page.inner_text("#detail-token") == "sat"
    assert sorted(table_values(page)) == [0, 2]

    with page.expect_download() as info:
        page.click("#save-png")
    png = tmp_path / "download.png"
    info.value.save_as(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    shot = tmp_path / "head_view.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    v.assert_clean()
    v.close()


def test_model_view_zoom_and_readout(browser, tmp_path) -> None:
    w = weights()
    n = len(TOKENS)
    w[1, 2] = np.eye(n, k=-1)  # a previous-token head; the first token attends itself
    w[1, 2, 0, 0] = 1.0
    path = tmp_path / "model.html"
    model_view_html(w, TOKENS, path=path)
    v = Watched(browser, path)
    page = v.page
    assert page.locator(".thumb").count() == 6
    cap = page.inner_text(".thumb[data-l='1'][data-h='2'] figcaption")
    assert cap == "L1 H2 · previous"
    page.click(".thumb[data-l='1'][data-h='2']")
    assert page.is_visible("#zoom")
    assert page.inner_text("#zoom-title") == "Layer 1, head 2"
    assert page.inner_text("#zoom-pattern").startswith("pattern: previous 1.00")
    box = page.locator("#zoom-body canvas").bounding_box()
    # Move to the centre of cell (query 3, key 2).
    page.mouse.move(box["x"] + 1 + (2 + 0.5) * (box["width"] - 2) / n,
                    box["y"] + 1 + (3 + 0.5) * (box["height"] - 2) / n)
    assert page.inner_text("#zoom-readout") == 'query 3 "sat" → key 2 "cat": 1.000'
    rows = page.locator("#zoom-body .hm-row")
    assert rows.nth(4).text_content() == HOSTILE
    page.keyboard.press("Escape")
    assert not page.is_visible("#zoom")
    page.screenshot(path=str(tmp_path / "model_view.png"), full_page=True)
    v.assert_clean()
    v.close()


def test_compare_view_tired_vs_wide(browser, tmp_path) -> None:
    a = ["The", "animal", "didn't", "cross", "the", "street", "because", "it", "was", "too",
         "tired"]
    b = [*a[:-1], "wide"]
    n = len(a)
    it, animal, street = a.index("it"), a.index("animal"), a.index("street")
    rng = np.random.default_rng(3)
    wa = rng.dirichlet(np.ones(n), size=(1, 2, n))
    wb = rng.dirichlet(np.ones(n), size=(1, 2, n))
    wa[0, 0, it] = np.eye(n)[animal] * 0.7 + 0.3 / n  # "it" -> "animal" when tired
    wb[0, 0, it] = np.eye(n)[street] * 0.7 + 0.3 / n  # "it" -> "street" when wide
    path = tmp_path / "compare.html"
    compare_view_html(wa, wb, a, b, names=("tired", "<i>wide</i>"), query="it", path=path)
    v = Watched(browser, path)
    page = v.page
    assert page.inner_text("#panel-b h3") == "<i>wide</i>"
    assert page.is_visible("#panel-diff")
    assert page.inner_text("#query-buttons .qbtn.sel") == "it"

    def column(side: str) -> list[float]:
        cells = page.query_selector_all(f"#compare-rows td.val[data-side='{side}']")
        return [float(c.inner_text()) for c in cells]

    np.testing.assert_allclose(column("a"), wa[0, 0, it], atol=5e-4)
    np.testing.assert_allclose(column("b"), wb[0, 0, it], atol=5e-4)
    np.testing.assert_allclose(column("diff"), wa[0, 0, it] - wb[0, 0, it], atol=1e-3)
    assert int(np.argmax(column("diff"))) == animal and int(np.argmin(column("diff"))) == street

    page.select_option("#head", "2")  # mean of heads
    page.click("#query-buttons .qbtn[data-i='1']")
    np.testing.assert_allclose(column("a"), wa[0, :, 1].mean(axis=0), atol=5e-4)
    page.screenshot(path=str(tmp_path / "compare_view.png"), full_page=True)
    v.assert_clean()
    v.close()
