"""What ``attnlab serve`` accepts from a client, and for how long it waits.

- ``read_body``: refuses a body whose Content-Length is over the limit before reading a byte,
  counts the bytes of a streamed (chunked) body and stops at the limit, and gives the whole body
  a deadline. The rest of a refused body is discarded by the server, never buffered.
- ``parse_json_object``: strict JSON: UTF-8 only, a nesting limit checked before parsing, no
  ``NaN``/``Infinity`` literals, no number that overflows to ``inf``; always a ``BadRequest``
  (a 400), never an exception that becomes a 500.
- ``DeadlineH11Protocol``: uvicorn's h11 protocol plus a deadline for each request head, and one
  for discarding a refused body. uvicorn's ``timeout_keep_alive`` starts only after a response
  and stops at the first byte a client sends, so a client that connects and then sends its
  headers a byte at a time (or never finishes them) would hold a connection forever.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from contextlib import aclosing
from typing import Any

import anyio
import h11
from starlette.requests import ClientDisconnect, Request
from uvicorn.protocols.http.h11_impl import H11Protocol


class BadRequest(Exception):
    """An answer for the client: ``status`` and a one-line message. ``close`` asks the server to
    drop the connection after the answer (a slow or vanished client, a body it cannot frame)."""

    def __init__(self, message: str, status: int = 400, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.close = close


# ------------------------------------------------------------------ who is asking

_OTHER_SITES = ("cross-site", "same-site")  # same-site: another port of localhost, for one


def refuse_cross_site(request: Request) -> None:
    """403 for a request that another site's page made. Browsers say so in ``Sec-Fetch-Site``
    (``same-origin`` from the viewer's page, ``none`` when typed in the address bar; absent from
    curl or old browsers) and, for POSTs and cross-origin fetches, in ``Origin``, which must then
    be this server's own (the Host header was checked before)."""
    site = request.headers.get("sec-fetch-site", "").strip().lower()
    if site in _OTHER_SITES:
        raise BadRequest(f"refused a request from another site's page (Sec-Fetch-Site: {site}); "
                         f"open the viewer at http://{request.headers.get('host', '127.0.0.1')}/", 403)
    origin = request.headers.get("origin")
    if origin is not None and origin.strip().lower() != f"http://{request.headers.get('host', '')}".lower():
        raise BadRequest(f"refused a request from another origin (Origin: {origin[:80]!r}); "
                         f"open the viewer at http://{request.headers.get('host', '127.0.0.1')}/", 403)


# ------------------------------------------------------------------ body


async def read_body(request: Request, *, max_bytes: int, timeout_s: float) -> bytes:
    """The request's body, at most ``max_bytes`` of it, received within ``timeout_s`` seconds."""
    length = request.headers.get("content-length")
    if length is not None:
        if not re.fullmatch(r"[0-9]+", length.strip()):
            raise BadRequest(f"Content-Length: expected a byte count, got {length[:40]!r}", close=True)
        digits = length.strip().lstrip("0")
        if len(digits) > 18 or int(digits or "0") > max_bytes:  # refused before any byte is read
            raise BadRequest(f"body: expected at most {max_bytes} bytes, got a Content-Length of "
                             f"{digits if len(digits) <= 18 else 'more than 10**18'}", 413)
    chunks: list[bytes] = []
    size = 0
    try:
        with anyio.fail_after(timeout_s):
            async with aclosing(request.stream()) as stream:
                async for chunk in stream:
                    size += len(chunk)
                    if size > max_bytes:  # a chunked body, or one longer than it said: stop here
                        raise BadRequest(f"body: expected at most {max_bytes} bytes, got more", 413)
                    chunks.append(chunk)
    except TimeoutError:
        raise BadRequest(f"body: expected the whole body within {timeout_s:g} s, got {size} bytes",
                         408, close=True) from None
    except ClientDisconnect:
        raise BadRequest("body: the client went away before sending it", close=True) from None
    return b"".join(chunks)


# ------------------------------------------------------------------ JSON

# A JSON string (escapes included) and the brackets outside strings, for the depth check.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


class _Refused(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _Refused(f"body: expected finite numbers, got {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"body: expected finite numbers, got {text[:40]} (overflows to {value})")
    return value


def nesting_depth(text: str) -> int:
    """How deep ``[`` and ``{`` nest in the JSON ``text``, ignoring brackets inside strings."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub('""', text)):
        depth += 1 if m.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def parse_json_object(raw: bytes, *, max_depth: int) -> dict[str, Any]:
    """``raw`` as a JSON object; an empty body is ``{}``. Anything else raises ``BadRequest``."""
    if not raw:
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"body: expected UTF-8, got byte 0x{raw[e.start]:02x} at offset {e.start}") from None
    depth = nesting_depth(text)  # before parsing: the parser recurses once per level
    if depth > max_depth:
        raise BadRequest(f"body: expected JSON nested at most {max_depth} deep, got {depth}")
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except _Refused as e:
        raise BadRequest(str(e)) from None
    except json.JSONDecodeError as e:
        raise BadRequest(f"body: expected JSON, got {e.msg} at line {e.lineno} column {e.colno}") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer longer than Python's digit limit
        reason = str(e).split(";")[0]
        raise BadRequest(f"body: expected JSON numbers Python can read, got: {reason}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"body: expected a JSON object, got {_json_type(data)}")
    return data


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# ------------------------------------------------------------------ connections

_SLOW_HEAD = b"error: the request head was too slow\n"
_TIMEOUT_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_SLOW_HEAD), _SLOW_HEAD))


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with deadlines for what uvicorn leaves unbounded.

    - ``head_timeout_s`` for each request line + headers, from the connection's start or the last
      response, disarmed once a head is parsed (the body has its own deadline, in ``read_body``).
      A late partial head gets a 408; a connection that sent nothing is just closed, and one that
      has not even read our last answer (a /view/ page can be megabytes) is dropped with it.
    - ``drain_timeout_s`` after a response to a request whose body was refused (a 413): the rest
      of that body is discarded as it arrives (uvicorn never buffers it), so a client that writes
      its whole body before reading still gets its 413, but only for this long; then the
      connection is closed."""

    head_timeout_s: float = 10.0
    drain_timeout_s: float = 2.0
    _deadline: asyncio.TimerHandle | None = None
    _draining = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.head_timeout_s)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_is_in():
            self._draining = False
            self._disarm()
        elif self._draining and self.conn.their_state is not h11.SEND_BODY:  # the refused body ended
            self._draining = False
            self._arm(self.head_timeout_s)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may parse a pipelined request
        if self.transport.is_closing():  # closed once the client has read the answer...
            if self.transport.get_write_buffer_size():
                self._arm(self.head_timeout_s)  # ...which it must do in time
            return
        self._draining = self.conn.their_state is h11.SEND_BODY  # a body we did not read
        self._arm(self.drain_timeout_s if self._draining else self.head_timeout_s)
        if self._head_is_in():
            self._draining = False
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _head_is_in(self) -> bool:
        # h11 moves the server to SEND_RESPONSE as soon as a request's head has been parsed.
        return self.conn.our_state in (h11.SEND_RESPONSE, h11.SEND_BODY)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._deadline_passed)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.transport.get_write_buffer_size():  # our last answer is unread: the client is gone
            self.transport.abort()  # (close() would wait, holding the answer, to send it first)
            return
        if self.transport.is_closing():
            return
        partial, _ = self.conn.trailing_data
        if self.conn.their_state is h11.IDLE and partial:
            self.transport.write(_TIMEOUT_408)
        self.transport.close()


def with_deadlines(head_timeout_s: float, drain_timeout_s: float) -> type[DeadlineH11Protocol]:
    """A ``DeadlineH11Protocol`` class with its deadlines set, for uvicorn's ``http=``."""
    for name, value in (("head_timeout_s", head_timeout_s), ("drain_timeout_s", drain_timeout_s)):
        if not value > 0:
            raise ValueError(f"{name}: expected a positive number of seconds, got {value}")
    return type("DeadlineH11Protocol", (DeadlineH11Protocol,),
                {"head_timeout_s": head_timeout_s, "drain_timeout_s": drain_timeout_s})
