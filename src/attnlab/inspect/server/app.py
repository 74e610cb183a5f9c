"""``attnlab serve``: a local page to type sentences and explore a real model's attention.

Safety, because a local server is reachable from every page the user's browser opens:

- binds 127.0.0.1 by default; the Host header must name this machine (127.0.0.1, localhost,
  ::1 or the bound host) — anything else gets 400, which stops DNS-rebinding attacks;
- POST bodies must be ``application/json`` (a cross-site form cannot send that without a
  CORS preflight, which is never granted) and at most ``MAX_BODY`` bytes — refused from the
  Content-Length before a byte is read, or cut off at the limit while streaming; texts at most
  ``max_chars`` characters and at most as many tokens as every view can draw (``max_tokens``:
  the model view embeds every layer and head), so each endpoint accepts the same texts;
- every malformed input (bad JSON, bad UTF-8, deep nesting, ``NaN``, overflowing numbers, wrong
  types, missing fields) is a 400 with a one-line ``{"error": ...}``; see ``server_limits``;
- slow or half-open clients are cut off: a deadline for each request head (``HEAD_TIMEOUT_S``)
  and body (``BODY_TIMEOUT_S``), the rest of a refused body discarded for ``DRAIN_TIMEOUT_S`` at
  most, idle keep-alive connections closed after ``KEEP_ALIVE_S``, at most ``LIMIT_CONCURRENCY``
  connections (``uvicorn_settings`` carries these to uvicorn);
- a request another site's page makes (``Sec-Fetch-Site: cross-site`` or ``same-site``, or an
  ``Origin`` that is not this server's) gets 403 before anything runs: ``/view`` and ``/save`` are
  GETs, so any page could otherwise make the viewer spend seconds of CPU per request; only the
  index page and its static files answer a link from elsewhere;
- serves only its own three static files by name, from an allowlist (no file-system paths,
  so no traversal), plus JSON (``/api/*``) and viz pages (``/view/*``);
- text reaches the page only as JSON read into ``textContent``; the viz pages embed it
  escaped, under a hash-pinned Content-Security-Policy, inside a sandboxed iframe.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Literal, overload

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from attnlab.inspect.attention_cache import capture, find_token
from attnlab.inspect.comparison import compare
from attnlab.inspect.inspection import SEED_TEXT, head_patterns, inspect_text
from attnlab.inspect.server.export import MEDIA, SAVE_VIEWS, compare_file, file_name, head_file, model_file
from attnlab.inspect.server.limits import (
    BadRequest,
    parse_json_object,
    read_body,
    refuse_cross_site,
    with_deadlines,
)
from attnlab.inspect.views import compare_page, inspect_page
from attnlab.models.loading import LoadedModel
from attnlab.viz.safety import max_html_tokens

__all__ = ["BadRequest", "create_app", "uvicorn_settings"]

MAX_BODY = 64 * 1024  # bytes in a POST body
MAX_JSON_DEPTH = 8  # nesting of a body's JSON (the API needs 2)
MAX_TOP = 10_000  # the largest ``top`` accepted
BODY_TIMEOUT_S = 10.0  # to receive a whole body, once its head is in
HEAD_TIMEOUT_S = 10.0  # to receive a request line + headers, from connect or the last response
DRAIN_TIMEOUT_S = 2.0  # to discard the rest of a refused (413) body before closing
KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this (uvicorn)
LIMIT_CONCURRENCY = 64  # open connections (or tasks) before uvicorn answers 503
MIN_HEAD_BYTES = 16 * 1024  # h11's default cap on a request head; raised for long /view/ URLs
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
          "index.html": "text/html; charset=utf-8"}
INDEX_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
             "frame-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
             "frame-ancestors 'none'")
COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                  "Cache-Control": "no-store"}

log = logging.getLogger("attnlab.serve")


def uvicorn_settings(max_chars: int = 1000, *, head_timeout_s: float = HEAD_TIMEOUT_S,
                     drain_timeout_s: float = DRAIN_TIMEOUT_S, keep_alive_s: float = KEEP_ALIVE_S,
                     limit_concurrency: int = LIMIT_CONCURRENCY) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` (``create_app`` puts them on
    ``app.state.uvicorn_settings``). The head cap fits a ``/view/compare`` URL of four fields of
    ``max_chars`` characters, each percent-encoded to at most 12 bytes."""
    return {"http": with_deadlines(head_timeout_s, drain_timeout_s), "timeout_keep_alive": keep_alive_s,
            "h11_max_incomplete_event_size": max(MIN_HEAD_BYTES, 4 * 12 * max_chars + 8 * 1024),
            "limit_concurrency": limit_concurrency}


def create_app(lm: LoadedModel, *, max_chars: int = 1000, host: str = "127.0.0.1",
               port: int | None = None, body_timeout_s: float = BODY_TIMEOUT_S) -> Starlette:
    """The Starlette app for ``lm``. Run it with uvicorn and ``app.state.uvicorn_settings``
    (``attnlab serve`` does)."""
    if max_chars < 1:
        raise ValueError(f"max_chars: expected a positive int, got {max_chars}")
    v = _Viewer(lm, max_chars, body_timeout_s)
    routes = [
        Route("/", v.static, methods=["GET"]),
        Route("/static/{name}", v.static, methods=["GET"]),
        Route("/api/health", v.health, methods=["GET"]),
        Route("/api/inspect", v.endpoint(v.api_inspect), methods=["POST"]),
        Route("/api/compare", v.endpoint(v.api_compare), methods=["POST"]),
        Route("/api/heads", v.endpoint(v.api_heads), methods=["POST"]),
        Route("/view/head", v.endpoint(v.view_head), methods=["GET"]),
        Route("/view/model", v.endpoint(v.view_model), methods=["GET"]),
        Route("/view/compare", v.endpoint(v.view_compare), methods=["GET"]),
    ]
    routes += [Route(f"/save/{view}.{fmt}", v.endpoint(v.saver(view, fmt)), methods=["GET"])
               for view in SAVE_VIEWS for fmt in MEDIA]
    hosts = sorted({"127.0.0.1", "localhost", "::1", "[::1]", host})
    app = Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)])
    app.state.uvicorn_settings = uvicorn_settings(max_chars)
    return app


class _Viewer:
    """The handlers of one app, and what they share: the model, one lock, a cache."""

    def __init__(self, lm: LoadedModel, max_chars: int, body_timeout_s: float) -> None:
        self.lm = lm
        self.max_chars = max_chars
        self.body_timeout_s = body_timeout_s
        self.files = {name: _static(name) for name in STATIC}  # read once; nothing else is served
        self.lock = threading.Lock()  # one forward pass at a time: hooks and tokenizers are shared
        self.heads_cache: dict[str, Any] = {}
        # What the page shows about the model; the folder's path stays on this machine.
        self.model_info = {k: val for k, val in lm.describe().items() if k != "path"}
        # The longest text every view can draw: the model view embeds every layer and head.
        view_tokens = max_html_tokens(lm.num_layers, lm.num_heads)
        self.max_tokens = min(view_tokens, lm.max_tokens)
        self.why_max_tokens = (
            f"the viewer draws all {lm.num_layers} layers x {lm.num_heads} heads of {lm.name} "
            f"for up to {view_tokens} tokens" if view_tokens <= lm.max_tokens
            else f"{lm.name} reads at most {lm.max_tokens} tokens")

    # ------------------------------------------------------------ plumbing

    def endpoint(self, handler: Callable[[dict[str, Any]], Response]
                 ) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` (arguments -> response, run under the lock in a thread) as an endpoint:
        arguments from the JSON body (POST) or the query (GET); every error an answer."""
        async def endpoint(request: Request) -> Response:
            try:
                refuse_cross_site(request)  # before the body is read or the model runs
                data = await self.arguments(request)
                resp = await run_in_threadpool(self.locked, handler, data)
            except BadRequest as e:
                resp = _error(request, str(e), e.status)
                if e.close:  # a slow or vanished client: do not wait for the rest
                    resp.headers["Connection"] = "close"
            except (ValueError, TypeError, KeyError, IndexError, ArithmeticError) as e:
                resp = _error(request, _message(e), 400)
            except Exception:  # a bug: logged here, one line for the client, never a traceback
                log.exception("%s %s failed", request.method, request.url.path)
                resp = _error(request, "internal error (the server's log has the details)", 500)
            resp.headers.update(COMMON_HEADERS)
            return resp
        endpoint.__name__ = handler.__name__
        return endpoint

    async def arguments(self, request: Request) -> dict[str, Any]:
        if request.method != "POST":
            return dict(request.query_params)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise BadRequest("expected a JSON body (Content-Type: application/json)", 415)
        raw = await read_body(request, max_bytes=MAX_BODY, timeout_s=self.body_timeout_s)
        return parse_json_object(raw, max_depth=MAX_JSON_DEPTH)

    def locked(self, handler: Callable[[dict[str, Any]], Response], data: dict[str, Any]) -> Response:
        with self.lock:
            return handler(data)

    @overload
    def text_arg(self, value: Any, name: str, required: Literal[True] = True) -> str: ...
    @overload
    def text_arg(self, value: Any, name: str, required: bool) -> str | None: ...

    def text_arg(self, value: Any, name: str, required: bool = True) -> str | None:
        if value is None or (isinstance(value, str) and not value.strip() and not required):
            if required:
                raise BadRequest(f"{name}: expected some text, got nothing")
            return None
        if not isinstance(value, str):
            raise BadRequest(f"{name}: expected a string, got {type(value).__name__}")
        if len(value) > self.max_chars:
            raise BadRequest(f"{name}: expected at most {self.max_chars} characters, got {len(value)}", 413)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:  # JSON's "\ud800" escape decodes to a lone surrogate
            raise BadRequest(f"{name}: expected Unicode text, got a lone surrogate "
                             f"U+{ord(value[e.start]):04X} at character {e.start}") from None
        return value

    def model_text(self, value: Any, name: str) -> str:
        """A text the model reads: ``text_arg``, then at most ``max_tokens`` tokens, so that what
        one endpoint accepts every view and save of the page can draw (a 130-word text used to
        pass ``/api/inspect`` and fail ``/view/model`` with a hint written for Python)."""
        text = self.text_arg(value, name)
        n = self.lm.encode(text, truncate=True, name=name).total_tokens  # counted, not cut
        if n > self.max_tokens:
            raise BadRequest(f"{name}: expected at most {self.max_tokens} tokens, got {n} "
                             f"({len(text)} characters); {self.why_max_tokens}: shorten the text", 413)
        return text

    # ------------------------------------------------------------ handlers

    def api_inspect(self, d: dict[str, Any]) -> Response:
        text = self.model_text(d.get("text"), "text")
        focus = self.text_arg(d.get("focus"), "focus", required=False)
        res = inspect_text(self.lm, text, focus=focus, k=_int_arg(d.get("top"), "top", 3, 1, MAX_TOP))
        rep = res.report.to_dict() | {"patterns": head_patterns(res.cache), "model": self.model_info}
        return JSONResponse(rep)

    def api_compare(self, d: dict[str, Any]) -> Response:
        a, b = self.model_text(d.get("a"), "a"), self.model_text(d.get("b"), "b")
        focus = self.text_arg(d.get("focus"), "focus") or "it"
        cands = _candidates(d.get("candidates"))
        top = _int_arg(d.get("top"), "top", 10, 1, MAX_TOP)
        return JSONResponse(compare(self.lm, a, b, focus, cands).to_dict(top))

    def api_heads(self, d: dict[str, Any]) -> Response:
        from attnlab.inspect.heads import detect_heads

        if "default" not in self.heads_cache:  # the built-in probes never change: compute once
            self.heads_cache["default"] = detect_heads(self.lm).to_dict()
        return JSONResponse(self.heads_cache["default"])

    def view_head(self, d: dict[str, Any]) -> Response:
        return self.view(d, "head")

    def view_model(self, d: dict[str, Any]) -> Response:
        return self.view(d, "model")

    def view(self, d: dict[str, Any], view: str) -> Response:
        lm = self.lm
        text = self.model_text(d.get("text"), "text")
        cache = capture(lm, text, keep_hidden=False)
        layer = _int_arg(d.get("layer"), "layer", 0, 0, lm.num_layers - 1)
        head = _int_arg(d.get("head"), "head", -1, -1, lm.num_heads - 1)
        focus = self.text_arg(d.get("focus"), "focus", required=False)
        if focus:
            find_token(cache.encoded, focus)  # a clear error when the focus is not in the text
        return _page(inspect_page(cache, view=view, layer=layer, heads=None if head < 0 else [head]))

    def view_compare(self, d: dict[str, Any]) -> Response:
        a, b = self.model_text(d.get("a"), "a"), self.model_text(d.get("b"), "b")
        focus = self.text_arg(d.get("focus"), "focus") or "it"
        return _page(compare_page(compare(self.lm, a, b, focus, _candidates(d.get("candidates")))))

    def saver(self, view: str, fmt: str) -> Callable[[dict[str, Any]], Response]:
        """The handler of ``/save/{view}.{fmt}``: the view the page shows, as a file to keep."""
        def save(d: dict[str, Any]) -> Response:
            body, name = self.save_compare(d, fmt) if view == "compare" else self.save_text(d, view, fmt)
            headers = {"Content-Disposition": f'attachment; filename="{name}"',
                       # opened rather than saved, the file still may not run or fetch anything
                       "Content-Security-Policy": "default-src 'none'; sandbox"}
            if fmt == "html":  # the page's own <meta> CSP pins its script and style: let them run
                headers["Content-Security-Policy"] = "frame-ancestors 'none'"
            return Response(body, media_type=MEDIA[fmt], headers=headers)
        save.__name__ = f"save_{view}_{fmt}"
        return save

    def save_text(self, d: dict[str, Any], view: str, fmt: str) -> tuple[bytes, str]:
        cache = capture(self.lm, self.model_text(d.get("text"), "text"), keep_hidden=False)
        if view == "model":
            return model_file(cache, fmt), file_name(view, fmt)
        layer = _int_arg(d.get("layer"), "layer", 0, 0, cache.num_layers - 1)
        heads = _heads_arg(d.get("heads"), cache.num_heads)
        return head_file(cache, fmt, layer, heads), file_name(view, fmt, layer)

    def save_compare(self, d: dict[str, Any], fmt: str) -> tuple[bytes, str]:
        a, b = self.model_text(d.get("a"), "a"), self.model_text(d.get("b"), "b")
        focus = self.text_arg(d.get("focus"), "focus", required=False) or "it"
        cmp = compare(self.lm, a, b, focus, _candidates(d.get("candidates")))
        ca, best = cmp.cache_a, cmp.best
        layer = _int_arg(d.get("layer"), "layer", best.layer, 0, ca.num_layers - 1)
        default_head = -1 if best.head is None else best.head
        head = _int_arg(d.get("head"), "head", default_head, -1, ca.num_heads - 1)  # -1: mean of heads
        n_q = max(len(ca.tokens), len(cmp.cache_b.tokens))  # the view's query buttons cover both texts
        query = _int_arg(d.get("query"), "query", cmp.focus_a, 0, n_q - 1)
        chosen = None if head < 0 else head
        return compare_file(cmp, fmt, layer, chosen, query), file_name("compare", fmt, layer, chosen)

    async def static(self, request: Request) -> Response:
        name = request.path_params.get("name", "index.html")
        if name not in self.files or (name == "index.html" and request.url.path != "/"):
            return PlainTextResponse("not found", status_code=404, headers=COMMON_HEADERS)
        headers = dict(COMMON_HEADERS)
        if name == "index.html":
            headers["Content-Security-Policy"] = INDEX_CSP
        return Response(self.files[name], media_type=STATIC[name], headers=headers)

    async def health(self, request: Request) -> Response:
        try:
            refuse_cross_site(request)
        except BadRequest as e:
            return _error(request, str(e), e.status)
        return JSONResponse({"ok": True, "model": self.model_info, "max_chars": self.max_chars,
                             "max_tokens": self.max_tokens,
                             "default_text": SEED_TEXT}, headers=COMMON_HEADERS)


def _static(name: str) -> str:
    return (resources.files("attnlab.inspect.server") / "static" / name).read_text(encoding="utf-8")


def _int_arg(value: Any, name: str, default: int, lo: int, hi: int) -> int:
    """An integer in ``lo..hi`` from JSON (an int, or a float with no fraction) or a query string."""
    if value is None or value == "":
        return default
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):  # not digits, or past Python's digit limit
            number = int(value.strip())
    if number is None:
        shown = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
        raise BadRequest(f"{name}: expected an integer, got {shown[:40]}")
    if not lo <= number <= hi:
        raise BadRequest(f"{name}: expected {lo}..{hi}, got {str(number)[:40]}")
    return number


def _heads_arg(value: Any, n_heads: int) -> list[int] | None:
    """Head indices from a query string, ``"1,4,9"``; empty or absent: every head (None)."""
    if value is None or not str(value).strip():
        return None
    parts = str(value).replace(",", " ").split()
    if len(parts) > n_heads:
        raise BadRequest(f"heads: expected at most {n_heads} head indices, got {len(parts)}")
    heads = [_int_arg(p, "heads", 0, 0, n_heads - 1) for p in parts]
    return sorted(set(heads))


def _candidates(value: Any) -> list[str] | None:
    if value in (None, "", []):
        return None
    if isinstance(value, str):
        return value.replace(",", " ").split()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise BadRequest("candidates: expected a list of tokens or a space-separated string")


def _message(e: Exception) -> str:
    text = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
    return (text.splitlines() or [type(e).__name__])[0][:500]


def _page(html: str) -> Response:
    # The viz page carries its own hash-pinned CSP; this header adds what a <meta> cannot.
    return HTMLResponse(html, headers={"Content-Security-Policy": "frame-ancestors 'self'",
                                       "X-Frame-Options": "SAMEORIGIN"})


def _error(request: Request, message: str, status: int) -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=status)
    return PlainTextResponse(f"error: {message}", status_code=status)  # text/plain: never parsed as HTML
