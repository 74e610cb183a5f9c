"""``attnlab serve``: Host check, no traversal, escaping, length caps, JSON API; then the real
page in headless Chromium (typed sentence -> weights drawn, screenshot)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from attnlab.inspect.inspection import SEED_TEXT, SEED_TEXT_B

CHROMIUM = "/usr/bin/chromium"
XSS = '<img src=x onerror="window.__pwned=1"></script><script>window.__pwned=1</script> it'


def test_index_static_and_security_headers(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/style.css").status_code == 200
    h = client.get("/api/health").json()
    assert h["ok"] and h["model"]["name"] == "all-MiniLM-L6-v2" and h["max_chars"] == 300
    assert "path" not in h["model"]  # the folder path stays on this machine


@pytest.mark.parametrize("host", ["evil.example", "attacker.com:8765", "127.0.0.1.evil.com", ""])
def test_host_header_must_be_local(client, host):
    r = client.get("/api/health", headers={"host": host})
    assert r.status_code == 400


@pytest.mark.parametrize("host", ["localhost:8765", "127.0.0.1"])
def test_local_host_headers_pass(client, host):
    assert client.get("/api/health", headers={"host": host}).status_code == 200


@pytest.mark.parametrize("path", [
    "/static/../server.py", "/static/%2e%2e/server.py", "/static/..%2fserver.py",
    "/static/%2e%2e%2f__init__.py",
    "/static//etc/passwd", "/static/index.html", "/static/app.js.map", "/etc/passwd", "/server.py",
    "/static/%2fetc%2fpasswd", "/static/..%5c..%5cserver.py",
])
def test_no_path_traversal(client, path):
    r = client.get(path)
    assert r.status_code == 404
    assert "import" not in r.text and "root:" not in r.text


def test_json_api_inspect_and_compare(client):
    rep = client.post("/api/inspect", json={"text": SEED_TEXT, "focus": "it"}).json()
    assert rep["focus"]["position"] == 10 and len(rep["patterns"]) == 6
    cmp = client.post("/api/compare", json={"a": SEED_TEXT, "b": SEED_TEXT_B, "focus": "it",
                                            "candidates": ["animal", "street"]}).json()
    assert (cmp["heads"][0]["layer"], cmp["heads"][0]["head"], cmp["heads"][0]["toward"]) == (3, 1, "street")
    heads = client.post("/api/heads", json={}).json()
    assert heads["top"]["previous"][0] == {"layer": 0, "head": 2, "score": pytest.approx(0.999, abs=2e-3)}


def test_length_caps_and_bad_requests(client):
    r = client.post("/api/inspect", json={"text": "a" * 301})
    assert r.status_code == 413 and "at most 300 characters" in r.json()["error"]
    assert client.get("/view/head", params={"text": "a " * 200}).status_code == 413
    r = client.post("/api/inspect", content=b"x" * (70 * 1024), headers={"content-type": "application/json"})
    assert r.status_code == 413
    form = {"content-type": "application/x-www-form-urlencoded"}
    r = client.post("/api/inspect", content="text=hi", headers=form)
    assert r.status_code == 415  # a cross-site form cannot send application/json
    as_json = {"content-type": "application/json"}
    assert client.post("/api/inspect", content="[1]", headers=as_json).status_code == 400
    r = client.post("/api/inspect", json={"text": "   "})
    assert r.status_code == 400 and "empty" in r.json()["error"]
    r = client.post("/api/inspect", json={"text": "a cat sat", "focus": "dog"})
    assert r.status_code == 400 and "the tokens are" in r.json()["error"]
    assert client.get("/view/head", params={"text": "hi", "layer": "x"}).status_code == 400
    assert client.get("/api/inspect").status_code == 405


def test_serve_passes_the_connection_limits_to_uvicorn(monkeypatch):
    import json

    import uvicorn
    from typer.testing import CliRunner

    from attnlab.cli.main import app as cli
    from attnlab.inspect.server import app as server
    from attnlab.inspect.server.limits import DeadlineH11Protocol

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    res = CliRunner().invoke(cli, ["serve", "--port", "18765", "--max-chars", "2000", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.splitlines()[0])["port"] == 18765
    ((served, kw),) = calls
    assert kw["host"] == "127.0.0.1" and kw["port"] == 18765
    assert {k: kw[k] for k in served.state.uvicorn_settings} == served.state.uvicorn_settings
    assert issubclass(kw["http"], DeadlineH11Protocol)
    assert (kw["http"].head_timeout_s, kw["http"].drain_timeout_s) == (server.HEAD_TIMEOUT_S,
                                                                       server.DRAIN_TIMEOUT_S)
    assert kw["timeout_keep_alive"] == server.KEEP_ALIVE_S
    assert kw["limit_concurrency"] == server.LIMIT_CONCURRENCY
    assert kw["h11_max_incomplete_event_size"] == 4 * 12 * 2000 + 8 * 1024  # follows --max-chars


def test_everything_is_escaped(client):
    rep = client.post("/api/inspect", json={"text": XSS}).json()
    assert "<" in rep["tokens"]  # JSON carries the text as data
    for path, params in (("/view/head", {"text": XSS}), ("/view/model", {"text": XSS}),
                         ("/view/compare", {"a": XSS, "b": XSS.replace("img", "svg"), "focus": "it"})):
        r = client.get(path, params=params)
        assert r.status_code == 200, r.text
        assert "<img src=x" not in r.text and "<script>window.__pwned" not in r.text
        assert "frame-ancestors 'self'" in r.headers["content-security-policy"]
    r = client.get("/view/head", params={"text": XSS, "focus": "<b>zz</b>"})
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/plain")


# ------------------------------------------------------------------ headless Chromium


@pytest.mark.browser
@pytest.mark.skipif(shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists(), reason="no chromium")
def test_page_in_headless_chromium(live_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1300, "height": 1400})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(live_server + "/")
        # (Waits use locators: the page's CSP forbids the eval behind wait_for_function.)
        expect(page.locator("#text-a")).to_have_value(SEED_TEXT)
        assert "all-MiniLM-L6-v2" in page.text_content("#model-name")
        # Type a sentence with markup in it; the table must show it as text.
        page.fill("#text-a", "The trophy didn't fit in the suitcase because it was too big <b>ok</b>")
        page.fill("#focus", "it")
        page.click("#go")
        # The page drew its default example on load: wait for this text's results, not those.
        trophy = re.compile(r"^/view/head\?text=The\+trophy")
        expect(page.locator("#view-frame")).to_have_attribute("src", trophy)
        page.wait_for_selector("#summary:not([hidden]) tbody tr")
        rows = page.locator("#summary tbody tr")
        assert rows.count() == 6
        assert "0." in rows.nth(3).text_content()  # weights are shown
        frame = page.frame_locator("#view-frame")
        frame.locator("body").wait_for()
        canvas = frame.locator("canvas").first
        canvas.wait_for(timeout=15000)
        assert frame.locator("body").text_content().count("trophy") >= 1  # token labels drawn
        page.wait_for_timeout(300)
        page.screenshot(path=str(tmp_path / "serve-head.png"), full_page=True)
        # The compare view with the seeds' pair.
        page.fill("#text-a", SEED_TEXT)
        page.fill("#text-b", SEED_TEXT_B)
        page.select_option("#view", "compare")
        page.click("#go")
        expect(page.locator("#summary-title")).to_contain_text("moved")
        first = page.locator("#summary tbody tr").first.text_content()
        assert first.startswith("31") and "street" in first  # layer 3, head 1, toward street
        frame.locator("#panel-a").wait_for(timeout=15000)
        page.screenshot(path=str(tmp_path / "serve-compare.png"), full_page=True)
        assert page.evaluate("window.__pwned === undefined")
        assert not [e for e in errors if "favicon" not in e], errors
        browser.close()
    assert (tmp_path / "serve-head.png").stat().st_size > 10_000
