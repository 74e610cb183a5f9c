"""The HTML pages as text: self-contained, data embedded safely, size limits (no browser)."""

from __future__ import annotations

import base64
import hashlib
import json
import re

import numpy as np
import pytest

from attnlab.viz import compare_view_html, head_view_html, load_json, model_view_html
from attnlab.viz.export import export_json

HOSTILE = '</script><img src=x onerror="window.__pwned=1;alert(1)">'
TOKENS = ["The", "cat", HOSTILE, "sat", "\u2028", "&amp;"]


def demo(layers: int = 2, heads: int = 3, n: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.ones(n), size=(layers, heads, n))  # (L, H, n, n)


def embedded(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="attnlab-data">(.*?)</script>', page,
                  re.S)
    assert m is not None
    return json.loads(m.group(1))


def inline_script(page: str) -> str:
    m = re.search(r"<script>(.*?)</script>", page, re.S)
    assert m is not None
    return m.group(1)


def sha(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


@pytest.mark.parametrize("make", [head_view_html, model_view_html])
def test_page_is_self_contained_and_pins_its_script(make) -> None:
    page = make(demo(), TOKENS)
    assert "://" not in page  # no CDN, no fonts, no URLs of any kind
    for needle in ("<link", "<script src", "@import", "url(", "<iframe", "<img"):
        assert needle not in page
    assert page.count("</script>") == 2  # the JSON block and the page script, nothing else
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src 'none'" in csp
    assert f"script-src 'sha256-{sha(inline_script(page))}'" in csp


def test_embedded_data_round_trips_with_hostile_tokens() -> None:
    w = demo()
    page = head_view_html(w, TOKENS, layer=1, selected_heads=[0, 2], title="<b>t</b>")
    assert HOSTILE not in page and "\u2028" not in page
    data = embedded(page)
    assert data["q_tokens"] == TOKENS and data["k_tokens"] == TOKENS
    np.testing.assert_allclose(np.array(data["weights"]), w, atol=5e-6)  # precision=5
    assert data["view"] == {"kind": "head", "title": "<b>t</b>", "layer": 1, "heads": [0, 2]}
    assert "<title>&lt;b&gt;t&lt;/b&gt;</title>" in page


def test_model_view_embeds_pattern_labels() -> None:
    w = demo(1, 2, 8)
    w[0, 1] = np.eye(8)
    data = embedded(model_view_html(w))
    assert data["view"]["patterns"][0][1]["label"] == "self"
    assert embedded(model_view_html(w, patterns=False))["view"]["patterns"] is None


def test_compare_view_payload_and_query_by_token() -> None:
    a = ["The", "animal", "didn't", "cross", "the", "street", "because", "it", "was", "too",
         "tired"]
    b = [*a[:-1], "wide"]
    page = compare_view_html(demo(1, 2, 11, 1), demo(1, 2, 11, 2), a, b,
                             names=("tired", "wide"), query="it", head=2)
    data = embedded(page)
    assert data["view"]["query"] == a.index("it") and data["view"]["head"] == 2
    assert data["a"]["q_tokens"] == a and data["b"]["k_tokens"] == b
    with pytest.raises(ValueError, match=r"query: expected a token of either input, got 'dog'"):
        compare_view_html(demo(1, 2, 11), demo(1, 2, 11), a, b, query="dog")
    with pytest.raises(ValueError, match=r"b_weights: expected the same \(layers, heads\)"):
        compare_view_html(demo(1, 2, 11), demo(2, 2, 11), a, b)


def test_views_accept_loaded_json_and_write_files(tmp_path) -> None:
    data = load_json(export_json(demo(), TOKENS, metadata={"model": "demo"}))
    path = tmp_path / "head.html"
    page = head_view_html(data, path=path)
    assert path.read_text(encoding="utf-8") == page
    assert embedded(page)["metadata"] == {"model": "demo"}
    with pytest.raises(ValueError, match=r"path: expected a file name ending in \.html"):
        head_view_html(data, path=tmp_path / "head.txt")


def test_size_limits_refuse_with_slicing_hint() -> None:
    big = np.full((1, 1, 300, 300), 1 / 300)
    with pytest.raises(ValueError, match=r"weights: expected at most 256 tokens per side .*"
                                         r"pass weights\[:, :, :256, :256\] and tokens\[:256\]"):
        head_view_html(big)
    many = np.full((12, 12, 100, 100), 0.01)
    with pytest.raises(ValueError, match=r"1,440,000 values.*weights\[:, :, :85, :85\]"):
        model_view_html(many)
    with pytest.raises(ValueError, match=r"a_weights: expected at most"):
        compare_view_html(big, big)


def test_position_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=r"layer: expected a layer position in 0\.\.1, got 5"):
        head_view_html(demo(), layer=5)
    with pytest.raises(ValueError, match=r"selected_heads: expected a head position in 0\.\.2"):
        head_view_html(demo(), selected_heads=[3])
