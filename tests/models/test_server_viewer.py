"""``attnlab serve``'s page (issue 16, item 6): it opens on the worked example instead of an empty
frame, an error clears the previous results, and the view on screen can be saved as PNG, SVG and
one self-contained HTML file. The save endpoints through Starlette's TestClient, the page in
headless Chromium."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from attnlab.inspect.inspection import SEED_TEXT, SEED_TEXT_B

CHROMIUM = "/usr/bin/chromium"
XSS = '<img src=x onerror="window.__pwned=1"></script><script>window.__pwned=1</script> it'
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ the save endpoints


@pytest.mark.parametrize(("view", "params", "name"), [
    ("head", {"text": SEED_TEXT, "layer": "3", "heads": "1,4"}, "attnlab-head-layer3"),
    ("model", {"text": SEED_TEXT}, "attnlab-model"),
    ("compare", {"a": SEED_TEXT, "b": SEED_TEXT_B, "focus": "it", "candidates": "animal street",
                 "layer": "3", "head": "1", "query": "10"}, "attnlab-compare-layer3-head1"),
])
def test_save_the_view_as_png_svg_and_html(client, view, params, name):
    for fmt, media in (("png", "image/png"), ("svg", "image/svg+xml"), ("html", "text/html")):
        r = client.get(f"/save/{view}.{fmt}", params=params)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith(media)
        assert r.headers["content-disposition"] == f'attachment; filename="{name}.{fmt}"'
        if fmt == "png":
            assert r.content.startswith(PNG_MAGIC) and len(r.content) > 20_000
        elif fmt == "svg":
            assert "<svg" in r.text and "animal" in r.text  # token labels kept as text
            assert "default-src 'none'" in r.headers["content-security-policy"]
        else:  # the interactive page itself: data embedded, nothing fetched
            assert 'id="attnlab-data"' in r.text and "default-src 'none'" in r.text
            assert "http://" not in r.text and "https://" not in r.text


def test_saved_compare_html_opens_on_the_reported_layer_head_and_query(client):
    params = {"a": SEED_TEXT, "b": SEED_TEXT_B, "focus": "it", "layer": "4", "head": "-1", "query": "2"}
    r = client.get("/save/compare.html", params=params)
    assert r.status_code == 200
    assert r.headers["content-disposition"].endswith('compare-layer4.html"')  # -1: the mean of heads
    assert '"layer":4,"head":12,"query":2' in r.text.replace(" ", "")


def test_saved_files_escape_the_text(client):
    for path, params in (("/save/head.html", {"text": XSS}), ("/save/head.svg", {"text": XSS}),
                         ("/save/model.svg", {"text": XSS}),
                         ("/save/compare.html", {"a": XSS, "b": XSS.replace("img", "svg")})):
        r = client.get(path, params=params)
        assert r.status_code == 200, r.text
        assert "<img src=x" not in r.text and "<script>window.__pwned" not in r.text


@pytest.mark.parametrize(("path", "params", "message"), [
    ("/save/head.png", {"text": SEED_TEXT, "heads": "1,99"}, "heads: expected 0..11, got 99"),
    ("/save/head.png", {"text": SEED_TEXT, "layer": "x"}, "layer: expected an integer, got 'x'"),
    ("/save/model.svg", {}, "text: expected some text, got nothing"),
    ("/save/compare.png", {"a": SEED_TEXT, "b": SEED_TEXT_B, "query": "99"}, "query: expected 0..14, got 99"),
])
def test_save_errors_are_one_plain_line(client, path, params, message):
    r = client.get(path, params=params)
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/plain")
    assert r.text == f"error: {message}"
    assert "content-disposition" not in r.headers


def test_only_the_three_views_and_formats_are_saved(client):
    assert client.get("/save/head.pdf", params={"text": "x"}).status_code == 404
    assert client.get("/save/generation.png", params={"text": "x"}).status_code == 404


# ------------------------------------------------------------------ headless Chromium


@pytest.fixture(scope="module")
def browser():
    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(viewport={"width": 1300, "height": 1400}, accept_downloads=True)
    pg = context.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.goto(live_server + "/")
    yield pg
    context.close()


def _expect():
    from playwright.sync_api import expect

    return expect


@pytest.mark.browser
def test_first_screen_shows_the_worked_example(page):
    expect = _expect()
    # Nothing clicked: the example is computed and drawn on load, with a line saying what it is.
    expect(page.locator("#summary")).to_be_visible(timeout=20_000)
    expect(page.locator("#summary-title")).to_have_text('Where "it" looks')
    assert page.locator("#summary tbody tr").count() == 6
    expect(page.locator("#intro")).to_contain_text("Transformer article's example")
    frame = page.locator("#view-frame")
    expect(frame).to_be_visible()
    expect(frame).to_have_attribute("src", re.compile(r"^/view/head\?text=The\+animal"))
    page.frame_locator("#view-frame").locator("canvas#lines").wait_for(timeout=15_000)
    assert page.text_content("#status") == ""
    assert page.errors == []


@pytest.mark.browser
def test_an_error_clears_the_previous_results(page):
    expect = _expect()
    page.click("#go")  # results on screen (also on a page that would not draw the example itself)
    expect(page.locator("#summary")).to_be_visible(timeout=20_000)
    expect(page.locator("#view-frame")).to_have_attribute("src", re.compile("^/view/head"))
    page.fill("#focus", "zebra")  # not a token of the text
    page.click("#go")
    expect(page.locator("#status")).to_contain_text("error: focus: 'zebra' is not a token of the text")
    expect(page.locator("#summary")).to_be_hidden()
    assert page.locator("#summary tbody tr").count() == 0
    frame = page.locator("#view-frame")
    expect(frame).to_be_hidden()
    assert frame.get_attribute("src") is None
    expect(page.locator("#save")).to_be_hidden()
    # A good request afterwards shows results again and clears the error.
    page.fill("#focus", "it")
    page.click("#go")
    expect(page.locator("#summary")).to_be_visible(timeout=20_000)
    expect(page.locator("#status")).to_have_text("")
    expect(frame).to_be_visible()


def _download(page, selector: str, tmp_path: Path) -> Path:
    with page.expect_download(timeout=30_000) as info:
        page.click(selector)
    d = info.value
    out = tmp_path / d.suggested_filename
    d.save_as(out)
    return out


@pytest.mark.browser
def test_save_the_current_view(page, tmp_path):
    expect = _expect()
    frame = page.frame_locator("#view-frame")
    frame.locator("canvas#lines").wait_for(timeout=20_000)
    # The page opens on the most focused head of "it"; choose layer 4 inside the view, show
    # heads 0 and 2 only: the save links follow what is on screen.
    frame.locator("#layer").select_option("4")
    frame.locator("#no-heads").click()
    frame.locator("input[data-h='0']").check()
    frame.locator("input[data-h='2']").check()
    expect(page.locator("#save-png")).to_have_attribute("href", re.compile(r"layer=4&heads=0%2C2$"))
    png = _download(page, "#save-png", tmp_path)
    assert png.name == "attnlab-head-layer4.png" and png.read_bytes().startswith(PNG_MAGIC)
    svg = _download(page, "#save-svg", tmp_path)
    assert svg.suffix == ".svg" and "L4 H2" in svg.read_text(encoding="utf-8")
    html = _download(page, "#save-html", tmp_path)
    assert html.name == "attnlab-head-layer4.html"
    # The saved page is self-contained: opened from disk it draws the same view, offline.
    saved = page.context.new_page()
    requests: list[str] = []
    saved.on("request", lambda r: requests.append(r.url))
    saved.goto(html.resolve().as_uri())
    saved.wait_for_selector("body[data-ready='1']", timeout=10_000)
    assert saved.locator("#layer").input_value() == "4"
    assert [cb.get_attribute("data-h") for cb in saved.locator("input[data-h]:checked").all()] == ["0", "2"]
    assert requests == [html.resolve().as_uri()]
    saved.close()
    # The compare view: its layer/head/query travel the same way.
    page.select_option("#view", "compare")
    page.fill("#text-b", SEED_TEXT_B)
    page.click("#go")
    frame.locator("#panel-a").wait_for(timeout=20_000)
    frame.locator("#head").select_option("12")  # the mean of heads
    expect(page.locator("#save-html")).to_have_attribute("href", re.compile(r"head=-1"))
    out = _download(page, "#save-png", tmp_path)
    assert out.name.startswith("attnlab-compare-layer") and out.read_bytes().startswith(PNG_MAGIC)
    assert page.errors == []
