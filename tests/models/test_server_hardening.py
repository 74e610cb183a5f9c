"""``attnlab serve`` hardening (issue 24): what one endpoint accepts every view and save can draw,
and no cross-site page can make the viewer compute."""

from __future__ import annotations

import time

import pytest

from attnlab.viz.safety import max_html_tokens

TEXT_ENDPOINTS = ["/view/head", "/view/model", "/save/head.html", "/save/head.png",
                  "/save/model.html", "/save/model.png"]


def _text_of(minilm, n_tokens: int) -> str:
    text = " ".join(["a"] * (n_tokens - 2))  # + [CLS] and [SEP]
    assert len(minilm.encode(text).ids) == n_tokens
    return text


def test_every_view_draws_the_longest_text_the_input_accepts(client, minilm):
    limit = client.get("/api/health").json()["max_tokens"]
    assert limit == max_html_tokens(6, 12) == 120  # MiniLM: 6 layers x 12 heads, 1M values
    text = _text_of(minilm, limit)
    start = time.perf_counter()
    assert client.post("/api/inspect", json={"text": text}).status_code == 200
    for path in TEXT_ENDPOINTS:
        # one head for the PNG of lines: 12 x 120 x 120 near-uniform lines take matplotlib ~30 s
        r = client.get(path, params={"text": text, "heads": "0"})
        assert r.status_code == 200, (path, r.text[:300])
    r = client.get("/view/compare", params={"a": text, "b": text, "focus": "a"})
    assert r.status_code == 200, r.text[:300]
    assert time.perf_counter() - start < 120


def test_a_longer_text_is_refused_everywhere_with_a_message_for_a_person(client, minilm):
    text = _text_of(minilm, 121)
    r = client.post("/api/inspect", json={"text": text})
    assert r.status_code == 413
    message = r.json()["error"]
    assert message.startswith("text: expected at most 120 tokens, got 121")
    assert "shorten the text" in message and "6 layers x 12 heads" in message
    for path in TEXT_ENDPOINTS:
        r = client.get(path, params={"text": text})
        assert (r.status_code, r.text) == (413, f"error: {message}"), path
        assert "weights[" not in r.text and "pass " not in r.text  # no Python hint for a browser
    for endpoint in ("/view/compare", "/save/compare.png"):
        r = client.get(endpoint, params={"a": "a cat", "b": text, "focus": "cat"})
        assert r.status_code == 413 and r.text.startswith("error: b: expected at most 120 tokens")
    r = client.post("/api/compare", json={"a": text, "b": "a cat", "focus": "cat"})
    assert r.status_code == 413 and r.json()["error"].startswith("a: expected at most 120 tokens")


# ------------------------------------------------------------------ cross-site requests

GETS = [("/view/head", {"text": "a cat sat"}), ("/view/model", {"text": "a cat sat"}),
        ("/view/compare", {"a": "a cat sat", "b": "a dog sat", "focus": "sat"}),
        ("/api/health", {})]
GETS += [(f"/save/{view}.{fmt}", GETS[i][1]) for i, view in enumerate(("head", "model", "compare"))
         for fmt in ("png", "svg", "html")]
POSTS = [("/api/inspect", {"text": "a cat sat"}),
         ("/api/compare", {"a": "a cat", "b": "a dog", "focus": "a"}), ("/api/heads", {})]
OTHER_SITE = [{"sec-fetch-site": "cross-site"}, {"sec-fetch-site": "same-site"},
              {"origin": "http://evil.example"}, {"origin": "null"}, {"origin": "http://127.0.0.1:9999"}]


@pytest.mark.parametrize("headers", OTHER_SITE)
def test_another_sites_page_gets_403_before_anything_runs(client, headers):
    start = time.perf_counter()
    answers = [client.get(path, params=params, headers=headers) for path, params in GETS]
    answers += [client.post(path, json=body, headers=headers) for path, body in POSTS]
    for r in answers:
        assert r.status_code == 403, (r.request.url, r.text[:200])
        assert "refused a request from another" in r.text and "http://127.0.0.1:8765/" in r.text
    assert time.perf_counter() - start < 5  # 16 requests, no forward pass and no drawing


def test_the_viewers_own_page_and_typed_urls_still_work(client):
    own = {"sec-fetch-site": "same-origin", "origin": "http://127.0.0.1:8765"}
    assert client.post("/api/inspect", json={"text": "a cat sat"}, headers=own).status_code == 200
    for headers in ({"sec-fetch-site": "same-origin"}, {"sec-fetch-site": "none"}, {}):
        assert client.get("/view/head", params={"text": "a cat sat"}, headers=headers).status_code == 200
    # a link from elsewhere may still open the index page and its static files (they compute nothing)
    for path in ("/", "/static/app.js"):
        assert client.get(path, headers={"sec-fetch-site": "cross-site"}).status_code == 200
