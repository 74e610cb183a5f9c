"""``attnlab serve`` under hostile or broken clients: bodies refused before they are read, chunked
bodies cut off at the limit, slow and half-open connections closed, every malformed input a 400
with a one-line JSON error, and a bounded concurrent burst answered without the memory growing.

Real sockets (a uvicorn server in a thread on 127.0.0.1, with one-second deadlines) only where the
behaviour lives in the connection; everything else goes through the ASGI app directly."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlencode

import httpx
import pytest
from starlette.testclient import TestClient

from attnlab.inspect.server.app import MAX_BODY, create_app, uvicorn_settings

CHUNK = 64 * 1024
JSON = {"content-type": "application/json"}
DEADLINE_S = 1.0  # the test server's head / body / keep-alive deadlines


@pytest.fixture
def client(app):
    return TestClient(app, base_url="http://127.0.0.1:8765", raise_server_exceptions=False)


# ------------------------------------------------------------------ bodies, through ASGI


def _asgi_post(app, headers: dict[str, str], total: int) -> tuple[int, dict[str, str], bytes, int]:
    """POST /api/inspect straight into the ASGI app, offering ``total`` bytes in 64 KiB chunks;
    returns (status, headers, body, how many body bytes the app pulled)."""
    sent = {"bytes": 0}
    out: dict = {"body": b""}

    async def receive():
        if sent["bytes"] >= total:
            await asyncio.sleep(3600)  # nothing more will come (the app must not wait for it)
        chunk = b"[" * min(CHUNK, total - sent["bytes"])
        sent["bytes"] += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": sent["bytes"] < total}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        else:
            out["body"] += message.get("body", b"")

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/api/inspect", "raw_path": b"/api/inspect", "query_string": b"",
             "root_path": "", "server": ("127.0.0.1", 8765), "client": ("127.0.0.1", 40000),
             "headers": [(b"host", b"127.0.0.1:8765"), (b"content-type", b"application/json"),
                         *((k.encode(), v.encode()) for k, v in headers.items())]}

    async def run():
        await asyncio.wait_for(app(scope, receive, send), timeout=30)

    asyncio.run(run())
    return out["status"], out["headers"], out["body"], sent["bytes"]


def test_content_length_over_limit_is_refused_before_reading(app):
    status, _, body, pulled = _asgi_post(app, {"content-length": str(8 << 20)}, 8 << 20)
    assert status == 413 and pulled == 0  # not one byte of the 8 MiB was read
    assert "Content-Length of 8388608" in json.loads(body)["error"]


def test_chunked_body_is_cut_off_at_the_limit(app):
    status, _, body, pulled = _asgi_post(app, {}, 8 << 20)  # no Content-Length: streamed
    assert status == 413 and MAX_BODY < pulled <= MAX_BODY + CHUNK
    assert json.loads(body) == {"error": f"body: expected at most {MAX_BODY} bytes, got more"}


def test_body_longer_than_its_content_length_is_cut_off(app):
    status, _, _, pulled = _asgi_post(app, {"content-length": "10"}, 8 << 20)
    assert status == 413 and pulled <= MAX_BODY + CHUNK


@pytest.mark.parametrize("length", ["ten", "-1", "1e3", "9" * 5000])
def test_bad_content_length_is_an_answer(app, length):
    status, _, body, pulled = _asgi_post(app, {"content-length": length}, 100)
    assert status in (400, 413) and pulled == 0 and "Content-Length" in json.loads(body)["error"]


# ------------------------------------------------------------------ malformed JSON

DEEP = 60_000
MALFORMED = {
    "not json": b"hello",
    "truncated": b'{"text": "hi"',
    "trailing garbage": b'{"text": "hi"} x',
    "only spaces": b"   ",
    "array": b'["text"]',
    "string": b'"text"',
    "number": b"3",
    "null": b"null",
    "array nested 30,000 deep": b"[" * (DEEP // 2) + b"]" * (DEEP // 2),  # 60 KB: under MAX_BODY
    "array opened 60,000 deep": b"[" * DEEP,
    "objects nested 30 deep": b'{"text":' * 30 + b'"hi"' + b"}" * 30,
    "deep value under text": b'{"text": ' + b"[" * 1000 + b"]" * 1000 + b"}",
    "1e999": b'{"text": "hi", "top": 1e999}',
    "-1e999": b'{"text": "hi", "top": -1e999}',
    "NaN": b'{"text": "hi", "top": NaN}',
    "Infinity": b'{"text": "hi", "top": Infinity}',
    "-Infinity": b'{"text": "hi", "top": -Infinity}',
    "5000-digit integer": b'{"text": "hi", "top": ' + b"9" * 5000 + b"}",
    "invalid UTF-8": b'{"text": "caf\xe9"}',
    "UTF-16": '{"text": "hi"}'.encode("utf-16"),
    "BOM": b'\xef\xbb\xbf{"text": "hi"}',
    "lone surrogate": b'{"text": "a \\ud800 b"}',
    "missing text": b'{"focus": "it"}',
    "text null": b'{"text": null}',
    "text number": b'{"text": 3}',
    "text array": b'{"text": ["a"]}',
    "text object": b'{"text": {"a": 1}}',
    "focus number": b'{"text": "hi", "focus": 7}',
    "top string": b'{"text": "hi", "top": "many"}',
    "top bool": b'{"text": "hi", "top": true}',
    "top fraction": b'{"text": "hi", "top": 2.5}',
    "top array": b'{"text": "hi", "top": [3]}',
    "top object": b'{"text": "hi", "top": {}}',
    "top zero": b'{"text": "hi", "top": 0}',
    "top huge": b'{"text": "hi", "top": 100000000000000000000000}',
}
MALFORMED_COMPARE = {
    "missing b": b'{"a": "the cat sat", "focus": "sat"}',
    "candidates numbers": b'{"a": "the cat sat", "b": "the dog sat", "focus": "sat", "candidates": [1]}',
    "candidates object": b'{"a": "the cat sat", "b": "the dog sat", "focus": "sat", "candidates": {}}',
    "top negative": b'{"a": "the cat sat", "b": "the dog sat", "focus": "sat", "top": -3}',
    "a 1e999": b'{"a": 1e999, "b": "the dog sat", "focus": "sat"}',
}


def _assert_one_line_400(r) -> None:
    assert r.status_code == 400, r.text[:300]
    assert r.headers["content-type"] == "application/json"
    assert "\n" not in r.text and "Traceback" not in r.text
    err = r.json()
    assert list(err) == ["error"] and isinstance(err["error"], str) and err["error"]


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_inspect_body_is_a_400(client, name):
    _assert_one_line_400(client.post("/api/inspect", content=MALFORMED[name], headers=JSON))


@pytest.mark.parametrize("name", list(MALFORMED_COMPARE))
def test_malformed_compare_body_is_a_400(client, name):
    _assert_one_line_400(client.post("/api/compare", content=MALFORMED_COMPARE[name], headers=JSON))


def test_errors_name_the_problem(client):
    def err(body: bytes) -> str:
        return client.post("/api/inspect", content=body, headers=JSON).json()["error"]

    assert "nested at most 8 deep, got 60000" in err(MALFORMED["array opened 60,000 deep"])
    assert "finite numbers, got 1e999" in err(MALFORMED["1e999"])
    assert "finite numbers, got NaN" in err(MALFORMED["NaN"])
    assert "expected UTF-8, got byte 0xe9" in err(MALFORMED["invalid UTF-8"])
    assert "top: expected an integer, got true" in err(MALFORMED["top bool"])
    assert "top: expected 1..10000, got 0" in err(MALFORMED["top zero"])
    assert "lone surrogate U+D800" in err(MALFORMED["lone surrogate"])
    assert "expected a JSON object, got an array" in err(MALFORMED["array"])


def test_brackets_inside_strings_are_not_nesting(client):
    r = client.post("/api/inspect", json={"text": "[[[[[[[[[[ {{{{{{{{{{ it", "top": 3.0})
    assert r.status_code == 200, r.text


def test_query_arguments_are_checked_too(client):
    for params in ({"text": "hi", "layer": "9" * 5000}, {"text": "hi", "layer": "1.5"},
                   {"text": "hi", "head": "99"}, {"text": "hi", "layer": "-1"}):
        r = client.get("/view/head", params=params)
        assert r.status_code == 400 and r.text.startswith("error: ") and "\n" not in r.text.strip()


# ------------------------------------------------------------------ a real server


@pytest.fixture(scope="module")
def uv(minilm, serving):
    """uvicorn on 127.0.0.1 with ``attnlab serve``'s settings, its deadlines shortened to 1 s."""
    app = create_app(minilm, max_chars=1000, body_timeout_s=DEADLINE_S)
    settings = uvicorn_settings(1000, head_timeout_s=DEADLINE_S, drain_timeout_s=DEADLINE_S,
                                keep_alive_s=DEADLINE_S)
    with serving(app, log_level="error", **settings) as srv:
        yield srv


@pytest.fixture
def server(uv) -> int:
    return uv.config.port


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Read until the server closes ``sock``; (closed in time, what it said)."""
    sock.settimeout(0.1)
    got, end = b"", time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, got
        if not data:
            return True, got
        got += data
    return False, got


def test_connection_that_never_sends_is_closed(server):
    with socket.create_connection(("127.0.0.1", server)) as s:
        closed, _ = _closed_within(s, DEADLINE_S + 2)
    assert closed


def test_slowloris_head_is_cut_off(server):
    with socket.create_connection(("127.0.0.1", server)) as s:
        start = time.monotonic()
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        closed = False
        for i in range(30):  # one header line every 0.1 s: never a whole head
            try:
                s.sendall(b"X-Slow-%d: 1\r\n" % i)
            except OSError:  # the server has closed it
                closed = True
                break
            time.sleep(0.1)
        closed, said = _closed_within(s, 2.0) if not closed else (True, b"")
    assert closed and time.monotonic() - start < DEADLINE_S + 2.5
    assert said == b"" or said.startswith(b"HTTP/1.1 408")


def test_half_sent_body_is_cut_off(server):
    with socket.create_connection(("127.0.0.1", server)) as s:
        s.sendall(b"POST /api/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                  b"content-length: 100\r\n\r\n{\"text\": ")
        closed, said = _closed_within(s, DEADLINE_S + 2)
    assert closed and said.startswith(b"HTTP/1.1 408")
    assert b"connection: close" in said.lower() and b"whole body within 1 s" in said


def test_a_byte_after_a_response_does_not_hold_the_connection(server):
    # uvicorn's keep-alive timer stops at the first byte; the head deadline does not.
    with socket.create_connection(("127.0.0.1", server)) as s:
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        s.settimeout(5)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        s.sendall(b"G")
        closed, _ = _closed_within(s, DEADLINE_S + 2)
    assert closed


def test_oversize_body_over_a_socket_gets_413_then_is_cut_off(server):
    with socket.create_connection(("127.0.0.1", server)) as s:
        s.sendall(b"POST /api/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                  b"content-length: 209715200\r\n\r\n" + b"[" * CHUNK)  # says 200 MiB
        s.settimeout(5)
        assert s.recv(65536).startswith(b"HTTP/1.1 413")  # answered before the body is in
        start, closed = time.monotonic(), False
        for _ in range(100):  # keep sending: discarded, and only for the drain deadline
            try:
                s.sendall(b"[" * CHUNK)
            except OSError:
                closed = True
                break
            time.sleep(0.05)
        closed = closed or _closed_within(s, 2.0)[0]
    assert closed and time.monotonic() - start < DEADLINE_S + 2.5


def test_answer_never_read_is_dropped(uv):
    # A /view/ page of ~110 tokens is megabytes: more than the kernel's socket buffers, so the
    # rest waits in the server's memory until this client (which never reads) takes it.
    query = urlencode({"text": "the cat sat on the mat " * 18})  # 110 tokens: under the views cap
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", uv.config.port))
        s.sendall(f"GET /view/model?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        mine = lambda: [c for c in list(uv.server_state.connections) if c.client == s.getsockname()]  # noqa: E731
        end = time.monotonic() + 5
        while not mine() and time.monotonic() < end:  # until the server has accepted it
            time.sleep(0.01)
        held, end = 0, time.monotonic() + 20
        while mine() and time.monotonic() < end:
            held = max([held, *(c.transport.get_write_buffer_size() for c in mine())])
            time.sleep(0.02)
        assert held > 0, "the answer fit in the socket buffers: nothing to test"
        assert not mine(), "the server still holds the unread answer"


def test_long_view_url_fits_the_head_cap(server):
    # /view/compare carries both texts in its URL: 2 x 1000 four-byte characters, percent-encoded,
    # is 24 KB, over h11's default 16 KiB for a head still arriving; the cap follows max_chars.
    text = "it " + "\U0001f600" * 997
    head = (f"GET /view/compare?{urlencode({'a': text, 'b': text, 'focus': 'it'})} HTTP/1.1\r\n"
            "Host: 127.0.0.1\r\n\r\n").encode()
    assert len(head) > 16 * 1024 + 4096
    with socket.create_connection(("127.0.0.1", server)) as s:
        s.sendall(head[:16 * 1024 + 4096])  # in two parts, as a slower network would deliver it
        time.sleep(0.2)
        s.sendall(head[16 * 1024 + 4096:])
        _, said = _closed_within(s, 10)
    assert said.startswith(b"HTTP/1.1 200"), said[:300]


@pytest.fixture(scope="module")
def cli_server(free_port):
    """``attnlab serve`` itself, in its own process (so that its memory can be read alone)."""
    port = free_port()
    code = "import sys; from attnlab.cli.main import app; sys.argv[0] = 'attnlab'; app()"
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--port", str(port), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail("attnlab serve did not start")
        yield proc.pid, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


async def _burst(port: int, n: int, big: bytes | None) -> list[int]:
    """``n`` concurrent requests of five kinds (two offer ``big``; none when it is None); the
    statuses."""
    url = f"http://127.0.0.1:{port}"

    async def chunked(body: bytes):
        for start in range(0, len(body), CHUNK):
            yield body[start:start + CHUNK]

    async def one(client: httpx.AsyncClient, i: int) -> int:
        kind = i % 5
        if kind == 0:
            r = await client.post(url + "/api/inspect", json={"text": f"the cat {i} sat", "top": 2})
        elif kind == 1:
            r = await client.post(url + "/api/inspect", content=b'{"text": "hi", "top": 1e999}', headers=JSON)
        elif big is None:
            r = await client.get(url + "/api/health")
        elif kind == 2:
            r = await client.post(url + "/api/inspect", content=big, headers=JSON)  # Content-Length
        elif kind == 3:
            r = await client.post(url + "/api/inspect", content=chunked(big), headers=JSON)  # chunked
        else:
            r = await client.get(url + "/api/health")
        return r.status_code

    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        return await asyncio.gather(*(one(client, i) for i in range(n)))


@pytest.mark.slow  # starts `attnlab serve` in its own process
def test_concurrent_burst_is_answered_in_bounded_memory(cli_server):
    pid, port = cli_server
    big = b"[" * (8 << 20)  # one 8 MiB body, offered by every oversize request
    expected = [200, 400, 413, 413, 200] * 10
    warm = asyncio.run(_burst(port, 50, None))  # worker threads, first passes: no big bodies
    assert warm == [200, 400, 200, 200, 200] * 10
    start = _rss(pid)
    peak = {"rss": start}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["rss"] = max(peak["rss"], _rss(pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    statuses = asyncio.run(_burst(port, 50, big))
    elapsed = time.monotonic() - t0
    done.set()
    sampler.join()
    end = _rss(pid)
    mib = 1 << 20
    print(f"server RSS: start {start / mib:.0f} MiB, peak +{(peak['rss'] - start) / mib:.1f}, "
          f"end +{(end - start) / mib:.1f}; {elapsed:.1f} s")
    assert statuses == expected  # all 50 answered, each as it should be
    # 20 of the 50 offer 8 MiB each (160 MiB): buffering them would show here.
    assert peak["rss"] - start < 48 * mib
    assert end - start < 16 * mib  # back near where it started
    assert elapsed < 60
