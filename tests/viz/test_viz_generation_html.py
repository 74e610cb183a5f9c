"""The generation and token-share pages: text checks, and hover/selection in real Chromium."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from attnlab.viz import generation_view_html, token_share_html
from attnlab.viz.html.generation import MAX_GENERATION_VALUES

CHROMIUM = "/usr/bin/chromium"
HOSTILE = '</script><img src=x onerror="window.__pwned=1;alert(1)">'
PROMPT = ["<s>", "Say", HOSTILE, "\n", "hi", "\t", "<b>bold</b>"]
ANSWER = [" Hello", "\n\n", "there", "!"]  # the last one is never fed: no row
LABELS = PROMPT + ANSWER
N = len(LABELS) - 1  # fed positions
GROUPS = [0, 0, 0, 1, 1, 1, 2, 2, 2]


def rows(layers: int = 2, heads: int = 9, n: int = N, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.dirichlet(np.full(p + 1, 0.5), size=(layers, heads)).astype(np.float16)
            for p in range(n)]  # rows[p]: (L, H, p + 1)


def gen_page(**kw: Any) -> str:
    args: dict[str, Any] = dict(layers=[4, 7], heads=list(range(9)), kv_group=GROUPS)
    args.update(kw)
    return generation_view_html(args.pop("rows", rows()), args.pop("labels", LABELS),
                                args.pop("prompt_len", len(PROMPT)), **args)


def share_page(**kw: Any) -> str:
    rng = np.random.default_rng(1)
    args: dict[str, Any] = dict(prompt_labels=PROMPT, highlight=[2, 3], layers=[0, 1, 2])
    args.update(kw)
    return token_share_html(args.pop("answer", ANSWER), args.pop("share", rng.random((4, 3))),
                            **args)


def embedded(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="attnlab-data">(.*?)</script>', page,
                  re.S)
    assert m is not None
    return json.loads(m.group(1))


def sha(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


# ---------------------------------------------------------------- text checks (no browser)

@pytest.mark.parametrize("make", [gen_page, share_page])
def test_pages_are_self_contained_and_escape_hostile_tokens(make) -> None:
    page = make(title="<b>t</b>")
    assert "://" not in page
    for needle in ("<link", "<script src", "@import", "url(", "<iframe", "<img", HOSTILE,
                   "<b>bold"):
        assert needle not in page
    assert page.count("</script>") == 2  # the JSON block and the page script only
    assert "<title>&lt;b&gt;t&lt;/b&gt;</title>" in page
    script = re.search(r"<script>(.*?)</script>", page, re.S).group(1)
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src 'none'" in csp and f"script-src 'sha256-{sha(script)}'" in csp


def test_generation_payload_round_trips() -> None:
    r = rows()
    data = embedded(gen_page(rows=r))
    assert data["shape"] == [2, 9, N] and data["prompt_len"] == len(PROMPT)
    assert data["layers"] == [4, 7] and data["kv_group"] == GROUPS
    # Names are one line; flowing text keeps the line break after the ↵; tabs are visible.
    assert data["tokens"][2] == HOSTILE and data["tokens"][3] == "↵"
    assert data["flow"][3] == "↵\n" and data["flow"][5] == "⇥"
    assert data["tokens"][len(PROMPT) + 1] == "↵↵" and data["flow"][len(PROMPT) + 1] == "↵\n↵\n"
    assert data["w_codec"] == "deflate"
    buf = np.frombuffer(zlib.decompress(base64.b64decode(data["w"])), dtype=np.uint8)
    assert buf.size == 2 * 9 * N * (N + 1) // 2
    start = 2 * 9 * 5 * 6 // 2  # position 5 starts after rows 0..4
    got = buf[start:start + 2 * 9 * 6].reshape(2, 9, 6) / 255
    np.testing.assert_allclose(got, r[5].astype(np.float64), atol=0.5 / 255 + 1e-3)
    # Labels may also stop at the last fed position.
    assert len(embedded(gen_page(labels=LABELS[:-1]))["tokens"]) == N


def test_control_characters_are_visible() -> None:
    data = embedded(gen_page(labels=[*LABELS[:-1], "\x1b[31m\u202e"]))
    assert data["tokens"][-1] == "\\x1b[31m\\u202e"


@pytest.mark.parametrize(("kw", "message"), [
    (dict(rows=[]), r"rows: expected a non-empty sequence of arrays"),
    (dict(rows=np.zeros((3, 2, 9, 3))), r"rows: expected a non-empty sequence .* got ndarray"),
    (dict(rows=[np.zeros((2, 9))]), r"rows\[0\]: expected 3 dimensions"),
    (dict(rows=[*rows()[:3], np.zeros((2, 9, 3))]),
     r"rows\[3\]: expected shape \(2, 9, 4\) \(layers, heads, p \+ 1\), got \(2, 9, 3\)"),
    (dict(rows=[*rows()[:-1], np.full((2, 9, N), 1.5)]),
     rf"rows\[{N - 1}\]: expected values in \[0, 1\], got min 1\.5"),
    (dict(rows=[np.full((2, 9, 1), np.nan)], labels=["a"], prompt_len=1),
     r"rows\[0\]: expected finite values"),
    (dict(labels=LABELS[:5]), rf"labels: expected {N} or {N + 1} labels .* got 5"),
    (dict(labels="hello"), r"labels: expected a sequence of token labels, got a single str"),
    (dict(prompt_len=0), rf"prompt_len: expected an int in 1\.\.{N} .* got 0"),
    (dict(prompt_len=N + 1), rf"prompt_len: expected an int in 1\.\.{N}"),
    (dict(prompt_len=True), r"prompt_len: expected an int"),
    (dict(layers=[4]), r"layers: expected 2 layer indices .* got 1"),
    (dict(heads=[0, 1, -2, 3, 4, 5, 6, 7, 8]), r"heads: expected non-negative ints"),
    (dict(kv_group=[0, 0, 1]), r"kv_group: expected one K/V head per recorded head \(9\), got 3"),
    (dict(path="out.txt"), r"path: expected a file name ending in \.html"),
])
def test_generation_validation(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gen_page(**kw)


@pytest.mark.parametrize(("kw", "message"), [
    (dict(share=np.zeros(4)), r"share: expected a non-empty 2-D array \(answer tokens, layers\), "
                              r"got shape \(4,\)"),
    (dict(share=np.full((4, 3), -0.5)), r"share: expected values in \[0, 1\]"),
    (dict(answer=ANSWER[:3]), r"answer_labels: expected 4 labels \(one per row of share\), got 3"),
    (dict(highlight=[]), r"highlight: expected at least one prompt position"),
    (dict(highlight=[1, len(PROMPT)]), rf"highlight: expected prompt positions in "
                                       rf"0\.\.{len(PROMPT) - 1}"),
    (dict(layers=[0, 1]), r"layers: expected 3 layer indices"),
    (dict(uniform=[0.1, 0.2]), r"uniform: expected 4 values \(one per row of share\), got 2"),
    (dict(uniform=[0.1, 0.2, 2.0, 0.1]), r"uniform: expected values in \[0, 1\]"),
])
def test_share_validation(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        share_page(**kw)


def test_generation_size_limit_refuses_with_hint() -> None:
    # 32 x 32 heads x 128 positions = 8,454,144 values > 8 Mi; broadcast rows cost no memory.
    big = [np.broadcast_to(np.float16(0.01), (32, 32, p + 1)) for p in range(128)]
    with pytest.raises(ValueError, match=rf"rows: expected at most {MAX_GENERATION_VALUES:,} "
                                         r"attention values .* got 32 layers x 32 heads x 128 "
                                         r"positions \(8,454,144 values\); keep fewer positions "
                                         r"\(rows\[:127\] and labels\[:128\]\)"):
        generation_view_html(big, ["t"] * 128, 10, layers=range(32), heads=range(32),
                             kv_group=[h // 4 for h in range(32)])
    with pytest.raises(ValueError, match=r"labels: expected at most 4096 tokens"):
        gen_page(labels=["x"] * 5000)


def test_share_payload_and_file(tmp_path) -> None:
    s = np.array([[0.1, 0.2, 0.3], [0.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.25, 0.25, 0.25]])
    path = tmp_path / "share.html"
    page = share_page(share=s, highlight=[3, 2, 3], path=path)
    assert path.read_text(encoding="utf-8") == page
    data = embedded(page)
    assert data["highlight"] == [2, 3] and data["share"] == s.tolist()
    np.testing.assert_allclose(data["mean"], s.mean(axis=1), atol=1e-4)
    assert data["uniform"] is None
    assert embedded(share_page(share=s, uniform=[0.5, 0.25, 0.2, 0.1]))["uniform"] == [0.5, 0.25, 0.2, 0.1]


# ---------------------------------------------------------------- in Chromium

no_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                 reason=f"no chromium at {CHROMIUM} (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


def open_page(browser: Any, path: Any) -> tuple[Any, Any, dict[str, list[str]]]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    seen: dict[str, list[str]] = {"dialogs": [], "errors": [], "requests": []}
    page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
    page.on("request", lambda r: seen["requests"].append(r.url))
    url = path.resolve().as_uri()
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=10_000)
    seen["url"] = [url]
    return context, page, seen


def assert_clean(page: Any, seen: dict[str, list[str]]) -> None:
    assert seen["dialogs"] == [] and seen["errors"] == []
    assert seen["requests"] == seen["url"]  # nothing fetched
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("document.images.length + document.querySelectorAll('b').length") == 0


def shading(page: Any, upto: int) -> tuple[np.ndarray, np.ndarray]:
    """(weights, intensities) the page put on tokens 0..upto."""
    attrs = page.eval_on_selector_all(
        ".flow .tok[data-p]", "els => els.map(e => [e.dataset.w, e.dataset.t])")
    w = np.array([float(a[0]) for a in attrs[: upto + 1]])
    t = np.array([float(a[1]) for a in attrs[: upto + 1]])
    assert all(a[0] is None for a in attrs[upto + 1:])  # later tokens are not shaded
    return w, t


@pytest.mark.browser
@no_chromium
def test_generation_view_hover_heads_and_groups(browser, tmp_path) -> None:
    r = rows()
    path = tmp_path / "gen.html"
    gen_page(rows=r, path=path)
    context, page, seen = open_page(browser, path)
    p = len(PROMPT) + 2  # the generated "there": its row covers keys 0..p
    assert page.locator("#prompt .tok").count() == len(PROMPT)
    assert page.locator("#answer .tok.gen").count() == len(ANSWER)
    assert page.locator("#prompt .tok[data-p='2']").text_content() == HOSTILE
    assert page.locator("#answer .tok.norow").count() == 1

    page.hover(f".tok[data-p='{p}']")  # default: first layer, head 0
    w, t = shading(page, p)
    want = r[p][0, 0].astype(np.float64)
    np.testing.assert_allclose(w, want, atol=1 / 255)
    np.testing.assert_allclose(t, w / w.max(), atol=1e-3)  # scaled to the row's max
    assert page.eval_on_selector_all(
        ".tok[data-p]", "els => els.slice(0, 3).map(e => e.style.backgroundColor !== '')") \
        == [True] * 3
    top = page.eval_on_selector_all("#top li", "els => els.map(e => +e.dataset.k)")
    q = np.rint(r[p][0, 0].astype(np.float32) * 255)  # the embedded bytes; ties by position
    assert top == sorted(range(p + 1), key=lambda k: (-q[k], k))[:5]
    assert page.inner_text("#detail-token") == "there"

    page.select_option("#head", "h:4")  # another head changes the shading
    w4, _ = shading(page, p)
    np.testing.assert_allclose(w4, r[p][0, 4].astype(np.float64), atol=1 / 255)
    assert np.abs(w4 - w).max() > 0.05
    page.uncheck("#relative")  # absolute shading: intensity = weight
    np.testing.assert_allclose(shading(page, p)[1], w4, atol=1e-3)

    page.click("#kv-chips button[data-sel='kv:1']")  # the mean of a K/V group
    assert page.input_value("#head") == "kv:1"
    assert page.inner_text("#kv-chips button.sel") == "KV 1:"
    want = r[p][0, 3:6].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(shading(page, p)[0], want, atol=1 / 255)
    page.select_option("#layer", "2")  # mean of layers, mean of heads
    page.select_option("#head", "mean")
    np.testing.assert_allclose(shading(page, p)[0], r[p].astype(np.float64).mean(axis=(0, 1)),
                               atol=1 / 255)

    # Pin a prompt token, move away: it stays; the arrow key moves the pin; Escape releases.
    page.click(".tok[data-p='4']")
    page.hover("#answer .tok[data-p='8']")
    assert page.inner_text("#detail-token") == "hi"
    page.keyboard.press("ArrowRight")
    assert page.inner_text("#detail-token") == "⇥"
    page.keyboard.press("Escape")
    assert page.locator(".tok.focus").count() == 0
    page.hover("#answer .tok.norow")
    assert "no attention row" in page.inner_text("#detail-caption")
    page.screenshot(path=str(tmp_path / "generation_view.png"), full_page=True)
    assert_clean(page, seen)
    context.close()


@pytest.mark.browser
@no_chromium
def test_token_share_hover_shows_layer_bars(browser, tmp_path) -> None:
    s = np.array([[0.1, 0.2, 0.3], [0.0, 0.0, 0.0], [0.9, 0.6, 0.3], [0.25, 0.25, 0.25]])
    path = tmp_path / "share.html"
    share_page(share=s, layers=[3, 10, 20], path=path)
    context, page, seen = open_page(browser, path)
    assert page.eval_on_selector_all("#prompt .tok.hl", "els => els.map(e => +e.dataset.p)") \
        == [2, 3]
    assert page.locator("#prompt .tok.hl").first.text_content() == HOSTILE
    assert page.inner_text("#legend .ticks").split() == ["0.000", "0.300", "0.600"]
    colours = page.eval_on_selector_all("#answer .tok", "els => els.map(e => e.style.backgroundColor)")
    assert len(set(colours)) == 4  # coloured by the mean share

    page.hover("#answer .tok[data-i='2']")
    assert page.inner_text("#detail-token") == "there"
    assert page.eval_on_selector_all("#bars .barrow .name", "els => els.map(e => e.textContent)") \
        == ["L3", "L10", "L20"]
    values = page.eval_on_selector_all("#bars .barrow .val", "els => els.map(e => +e.textContent)")
    np.testing.assert_allclose(values, s[2], atol=5e-4)
    widths = page.eval_on_selector_all("#bars .fill", "els => els.map(e => e.offsetWidth)")
    assert widths[0] > widths[1] > widths[2] > 0  # bars follow the shares

    assert page.locator("#bars .uniform-mark").count() == 0  # no baseline given: none drawn

    page.click("#answer .tok[data-i='0']")  # pinned across mouse moves
    page.hover("#answer .tok[data-i='3']")
    values = page.eval_on_selector_all("#bars .barrow .val", "els => els.map(e => +e.textContent)")
    np.testing.assert_allclose(values, s[0], atol=5e-4)
    page.screenshot(path=str(tmp_path / "token_share.png"), full_page=True)
    assert_clean(page, seen)
    context.close()

    # The uniform baseline: a mark on every bar at the share uniform attention gives the span,
    # and the ratio to it in the caption and the header.
    share_page(share=s, layers=[3, 10, 20], uniform=[0.1, 0.1, 0.15, 0.05], path=path)
    context, page, seen = open_page(browser, path)
    assert "Mean share 0.263 against 0.100 for uniform attention" in page.inner_text("header")
    page.hover("#answer .tok[data-i='2']")
    assert "(4.0× uniform); uniform attention: 0.150" in page.inner_text("#detail-caption")
    marks = page.eval_on_selector_all("#bars .uniform-mark", "els => els.map(e => e.offsetLeft)")
    tracks = page.eval_on_selector_all("#bars .track", "els => els.map(e => e.clientWidth)")
    assert len(marks) == 3
    np.testing.assert_allclose([m / t for m, t in zip(marks, tracks, strict=True)], 0.15 / 0.9, atol=0.02)
    assert_clean(page, seen)
    context.close()
