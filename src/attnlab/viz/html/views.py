"""The three interactive pages: head view, model view, compare view.

Each returns the HTML text (and writes ``path`` when given). Weights may be (Lq, Lk),
(heads, Lq, Lk) or (layers, heads, Lq, Lk), or an :class:`~attnlab.viz.export.AttentionData`
(e.g. from :func:`~attnlab.viz.export.load_json`). Pages embed the weights rounded to
``precision`` decimals (default 5) to stay small; they show them with 3 decimals.
Inputs larger than :data:`~attnlab.viz.safety.MAX_HTML_TOKENS` tokens per side or
:data:`~attnlab.viz.safety.MAX_HTML_VALUES` values are refused with a slicing hint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnlab.arguments import expect_int
from attnlab.viz.export import AttentionData, attention_data
from attnlab.viz.html.page import render_page, write_page
from attnlab.viz.notebook import HtmlPage
from attnlab.viz.patterns import classify_heads
from attnlab.viz.safety import MAX_PANELS, check_html_size


def _data(weights: Any, tokens: Sequence[Any] | None, q_tokens: Sequence[Any] | None,
          k_tokens: Sequence[Any] | None, layers: Sequence[int] | None,
          heads: Sequence[int] | None, metadata: dict[str, Any] | None,
          name: str = "weights") -> AttentionData:
    data = attention_data(weights, tokens, q_tokens=q_tokens, k_tokens=k_tokens,
                          layers=layers, heads=heads, metadata=metadata)
    check_html_size(data.shape, name)
    return data


def _position(name: str, value: int, n: int, what: str) -> int:
    return expect_int(name, value, 0, n - 1, expected=f"a {what} position in 0..{n - 1}")


def head_view_html(
    weights: Any,
    tokens: Sequence[Any] | None = None,
    *,
    q_tokens: Sequence[Any] | None = None,
    k_tokens: Sequence[Any] | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    layer: int = 0,
    selected_heads: Sequence[int] | None = None,
    title: str = "Attention: head view",
    metadata: dict[str, Any] | None = None,
    precision: int | None = 5,
    path: str | Path | None = None,
) -> HtmlPage:
    """BertViz-style head view: tokens on two sides joined by lines weighted by attention.

    ``layer`` is the initially shown layer and ``selected_heads`` the initially checked heads
    (positions along the layer/head axes; default all heads).
    """
    data = _data(weights, tokens, q_tokens, k_tokens, layers, heads, metadata)
    n_layers, n_heads = data.shape[:2]
    layer = _position("layer", layer, n_layers, "layer")
    sel = list(range(n_heads)) if selected_heads is None else [
        _position("selected_heads", h, n_heads, "head") for h in selected_heads]
    payload = data.to_dict(precision) | {
        "view": {"kind": "head", "title": title, "layer": layer, "heads": sel}}
    text = render_page("head", payload, title)
    write_page(text, path)
    return text


def model_view_html(
    weights: Any,
    tokens: Sequence[Any] | None = None,
    *,
    q_tokens: Sequence[Any] | None = None,
    k_tokens: Sequence[Any] | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    patterns: bool = True,
    title: str = "Attention: model view",
    metadata: dict[str, Any] | None = None,
    precision: int | None = 5,
    path: str | Path | None = None,
) -> HtmlPage:
    """Layers x heads thumbnails; click one to zoom. ``patterns`` labels each head with
    :func:`~attnlab.viz.patterns.classify_pattern` (e.g. "previous", "sink")."""
    data = _data(weights, tokens, q_tokens, k_tokens, layers, heads, metadata)
    n_layers, n_heads = data.shape[:2]
    if n_layers * n_heads > MAX_PANELS:
        raise ValueError(
            f"weights: expected at most {MAX_PANELS} (layer, head) thumbnails, got "
            f"{n_layers}x{n_heads}; pass a slice of layers, e.g. weights[:8]"
        )
    view: dict[str, Any] = {"kind": "model", "title": title, "patterns": None}
    if patterns:
        view["patterns"] = [[r.as_dict() for r in row] for row in classify_heads(data.weights)]
    text = render_page("model", data.to_dict(precision) | {"view": view}, title)
    write_page(text, path)
    return text


def compare_view_html(
    a_weights: Any,
    b_weights: Any,
    a_tokens: Sequence[Any] | None = None,
    b_tokens: Sequence[Any] | None = None,
    *,
    names: tuple[str, str] = ("A", "B"),
    texts: tuple[str, str] | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    layer: int = 0,
    head: int = 0,
    query: int | str | None = None,
    title: str = "Attention: compare view",
    precision: int | None = 5,
    path: str | Path | None = None,
) -> HtmlPage:
    """Two inputs' attention side by side (same layer/head) and their difference A − B.

    For "The animal didn't cross the street because it was too tired" vs "... too wide":
    ``query="it"`` opens on the row of "it". ``head`` may equal the number of heads to show
    the mean over heads. The difference is shown when both inputs have the same lengths.
    ``texts`` are the two sentences shown above the panels (default: tokens joined).
    """
    a = _data(a_weights, a_tokens, None, None, layers, heads, None, "a_weights")
    b = _data(b_weights, b_tokens, None, None, layers, heads, None, "b_weights")
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(
            f"b_weights: expected the same (layers, heads) as a_weights {a.shape[:2]}, "
            f"got {b.shape[:2]}"
        )
    if len(names) != 2:
        raise ValueError(f"names: expected 2 names, got {len(names)}")
    layer = _position("layer", layer, a.shape[0], "layer")
    head = _position("head", head, a.shape[1] + 1, "head (or n_heads for the mean)")
    q = _query_position(query, a, b)
    da, db = a.to_dict(precision), b.to_dict(precision)
    if texts is not None:
        da["metadata"] = {**da["metadata"], "text": str(texts[0])}
        db["metadata"] = {**db["metadata"], "text": str(texts[1])}
    view = {"kind": "compare", "title": title, "names": [str(n) for n in names],
            "layer": layer, "head": head, "query": q}
    text = render_page("compare", {"view": view, "a": da, "b": db}, title)
    write_page(text, path)
    return text


def _query_position(query: int | str | None, a: AttentionData, b: AttentionData) -> int:
    n = max(a.shape[2], b.shape[2])
    if query is None:
        return 0
    if isinstance(query, str):
        for toks in (a.q_tokens, b.q_tokens):
            if query in toks:
                return toks.index(query)
        raise ValueError(f"query: expected a token of either input, got {query!r}")
    return _position("query", query, n, "query")
