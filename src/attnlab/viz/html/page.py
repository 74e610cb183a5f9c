"""Assemble one self-contained HTML page: template + inline CSS/JS + escaped JSON data.

Nothing is fetched: no CDN, no fonts, no images. A Content-Security-Policy pins the page's own
script and style by SHA-256 hash, forbids inline event handlers and other scripts, and blocks
every network request (``default-src 'none'``), a second line of defence behind textContent.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from attnlab.viz.notebook import HtmlPage
from attnlab.viz.safety import json_for_script

VIEWS = ("head", "model", "compare", "generation", "share")
# Extra stylesheet a view needs on top of style.css.
_VIEW_CSS = {"generation": "generation.css", "share": "generation.css"}
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


@cache
def asset(name: str) -> str:
    """Text of a file shipped in ``attnlab/viz/html/assets`` (package data)."""
    return (resources.files("attnlab.viz.html") / "assets" / name).read_text(encoding="utf-8")


def _sha256(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "sha256-" + base64.b64encode(digest).decode("ascii")


def render_page(view: str, payload: dict[str, Any], title: str) -> HtmlPage:
    """The page for ``view`` with ``payload`` embedded as JSON (read by the view's script); a
    ``str`` that displays itself in a notebook (:class:`~attnlab.viz.notebook.HtmlPage`)."""
    if view not in VIEWS:
        raise ValueError(f"view: expected one of {VIEWS}, got {view!r}")
    css = asset("style.css") + ("\n" + asset(_VIEW_CSS[view]) if view in _VIEW_CSS else "")
    js = asset("common.js") + "\n" + asset(f"{view}.js")
    csp = "; ".join([
        "default-src 'none'",
        f"script-src '{_sha256(js)}'",
        f"style-src '{_sha256(css)}'",
        "img-src data: blob:",
        "base-uri 'none'",
        "form-action 'none'",
    ])
    values = {
        "csp": csp,
        "title": escape(title),
        "css": css,
        "js": js,
        "view": view,
        "data": json_for_script(payload),
    }
    # One pass over the template: inserted text is never scanned for placeholders again.
    text = _PLACEHOLDER.sub(lambda m: values[m.group(1)], asset("page.html"))
    return HtmlPage.of(text, view, title)


def write_page(text: str, path: str | Path | None) -> None:
    if path is None:
        return
    p = Path(path)
    if p.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"path: expected a file name ending in .html, got {str(path)!r}")
    p.write_text(text, encoding="utf-8")
