"""``attnlab serve``: a local page to type sentences and explore a real model's attention.

Safety, because a local server is reachable from every page the user's browser opens:

- binds 127.0.0.1 by default; the Host header must name this machine (127.0.0.1, localhost,
  ::1 or the bound host) — anything else gets 400, which stops DNS-rebinding attacks;
- POST bodies must be ``application/json`` (a cross-site form cannot send that without a
  CORS preflight, which is never granted) and at most 64 KiB; texts at most ``max_chars``;
- serves only its own three static files by name, from an allowlist (no file-system paths,
  so no traversal), plus JSON (``/api/*``) and viz pages (``/view/*``);
- text reaches the page only as JSON read into ``textContent``; the viz pages embed it
  escaped, under a hash-pinned Content-Security-Policy, inside a sandboxed iframe.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from attnlab.inspect.capture import capture, find_token
from attnlab.inspect.compare import compare
from attnlab.inspect.report import SEED_TEXT, head_patterns, inspect_text
from attnlab.inspect.views import compare_page, inspect_page
from attnlab.models.loading import LoadedModel

MAX_BODY = 64 * 1024
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
          "index.html": "text/html; charset=utf-8"}
INDEX_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
             "frame-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
             "frame-ancestors 'none'")
COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                  "Cache-Control": "no-store"}


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _static(name: str) -> str:
    return (resources.files("attnlab.inspect") / "static" / name).read_text(encoding="utf-8")


def create_app(lm: LoadedModel, *, max_chars: int = 1000, host: str = "127.0.0.1",
               port: int | None = None) -> Starlette:
    """The Starlette app for ``lm``. Run it with uvicorn (``attnlab serve`` does)."""
    if max_chars < 1:
        raise ValueError(f"max_chars: expected a positive int, got {max_chars}")
    files = {name: _static(name) for name in STATIC}  # read once; nothing else is ever served
    lock = threading.Lock()  # one forward pass at a time: hooks and tokenizers are shared state
    heads_cache: dict[str, Any] = {}
    # What the page shows about the model; the folder's path stays on this machine.
    model_info = {k: v for k, v in lm.describe().items() if k != "path"}

    def text_arg(value: Any, name: str, required: bool = True) -> str | None:
        if value is None or (isinstance(value, str) and not value.strip() and not required):
            if required:
                raise BadRequest(f"{name}: expected some text, got nothing")
            return None
        if not isinstance(value, str):
            raise BadRequest(f"{name}: expected a string, got {type(value).__name__}")
        if len(value) > max_chars:
            raise BadRequest(f"{name}: expected at most {max_chars} characters, got {len(value)}", 413)
        return value

    def int_arg(value: Any, name: str, default: int) -> int:
        if value in (None, ""):
            return default
        try:
            return int(value)
        except (TypeError, ValueError):
            raise BadRequest(f"{name}: expected an integer, got {str(value)[:40]!r}") from None

    async def body(request: Request) -> dict[str, Any]:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise BadRequest("expected a JSON body (Content-Type: application/json)", 415)
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise BadRequest(f"expected a body of at most {MAX_BODY} bytes, got {len(raw)}", 413)
        try:
            data = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("expected a JSON object") from None
        if not isinstance(data, dict):
            raise BadRequest("expected a JSON object")
        return data

    def guarded(fn: Callable[..., Response]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            from starlette.concurrency import run_in_threadpool

            try:
                data = await body(request) if request.method == "POST" else dict(request.query_params)

                def work() -> Response:
                    with lock:
                        return fn(data)
                resp = await run_in_threadpool(work)
            except BadRequest as e:
                resp = _error(request, str(e), e.status)
            except (ValueError, TypeError, KeyError, IndexError) as e:
                resp = _error(request, str(e.args[0] if isinstance(e, KeyError) and e.args else e), 400)
            resp.headers.update(COMMON_HEADERS)
            return resp
        return endpoint

    def api_inspect(d: dict[str, Any]) -> Response:
        text = text_arg(d.get("text"), "text")
        focus = text_arg(d.get("focus"), "focus", required=False)
        res = inspect_text(lm, text, focus=focus, k=int_arg(d.get("top"), "top", 3))
        rep = res.report | {"patterns": head_patterns(res.cache), "model": model_info}
        return JSONResponse(rep)

    def api_compare(d: dict[str, Any]) -> Response:
        a, b = text_arg(d.get("a"), "a"), text_arg(d.get("b"), "b")
        focus = text_arg(d.get("focus"), "focus") or "it"
        cands = _candidates(d.get("candidates"))
        cmp = compare(lm, a, b, focus, cands)
        return JSONResponse(cmp.to_dict(int_arg(d.get("top"), "top", 10)))

    def api_heads(d: dict[str, Any]) -> Response:
        from attnlab.inspect.heads import detect_heads

        if "default" not in heads_cache:  # the built-in probes never change: compute once
            heads_cache["default"] = detect_heads(lm).to_dict()
        return JSONResponse(heads_cache["default"])

    def view_head(d: dict[str, Any]) -> Response:
        return _view(d, "head")

    def view_model(d: dict[str, Any]) -> Response:
        return _view(d, "model")

    def _view(d: dict[str, Any], view: str) -> Response:
        text = text_arg(d.get("text"), "text")
        cache = capture(lm, text, keep_hidden=False)
        layer = int_arg(d.get("layer"), "layer", 0)
        if not 0 <= layer < lm.num_layers:
            raise BadRequest(f"layer: expected 0..{lm.num_layers - 1}, got {layer}")
        head = int_arg(d.get("head"), "head", -1)
        if not -1 <= head < lm.num_heads:
            raise BadRequest(f"head: expected 0..{lm.num_heads - 1}, got {head}")
        focus = text_arg(d.get("focus"), "focus", required=False)
        if focus:
            find_token(cache.encoded, focus)  # a clear error when the focus is not in the text
        return _page(inspect_page(cache, view=view, layer=layer, heads=None if head < 0 else [head]))

    def view_compare(d: dict[str, Any]) -> Response:
        a, b = text_arg(d.get("a"), "a"), text_arg(d.get("b"), "b")
        focus = text_arg(d.get("focus"), "focus") or "it"
        return _page(compare_page(compare(lm, a, b, focus, _candidates(d.get("candidates")))))

    async def static(request: Request) -> Response:
        name = request.path_params.get("name", "index.html")
        if name not in files or (name == "index.html" and request.url.path != "/"):
            return PlainTextResponse("not found", status_code=404, headers=COMMON_HEADERS)
        headers = dict(COMMON_HEADERS)
        if name == "index.html":
            headers["Content-Security-Policy"] = INDEX_CSP
        return Response(files[name], media_type=STATIC[name], headers=headers)

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, "model": model_info, "max_chars": max_chars,
                             "default_text": SEED_TEXT}, headers=COMMON_HEADERS)

    routes = [
        Route("/", static, methods=["GET"]),
        Route("/static/{name}", static, methods=["GET"]),
        Route("/api/health", health, methods=["GET"]),
        Route("/api/inspect", guarded(api_inspect), methods=["POST"]),
        Route("/api/compare", guarded(api_compare), methods=["POST"]),
        Route("/api/heads", guarded(api_heads), methods=["POST"]),
        Route("/view/head", guarded(view_head), methods=["GET"]),
        Route("/view/model", guarded(view_model), methods=["GET"]),
        Route("/view/compare", guarded(view_compare), methods=["GET"]),
    ]
    hosts = sorted({"127.0.0.1", "localhost", "::1", "[::1]", host})
    return Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)])


def _candidates(value: Any) -> list[str] | None:
    if value in (None, "", []):
        return None
    if isinstance(value, str):
        return value.replace(",", " ").split()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise BadRequest("candidates: expected a list of tokens or a space-separated string")


def _page(html: str) -> Response:
    # The viz page carries its own hash-pinned CSP; this header adds what a <meta> cannot.
    return HTMLResponse(html, headers={"Content-Security-Policy": "frame-ancestors 'self'",
                                       "X-Frame-Options": "SAMEORIGIN"})


def _error(request: Request, message: str, status: int) -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=status)
    return PlainTextResponse(f"error: {message}", status_code=status)  # text/plain: never parsed as HTML
