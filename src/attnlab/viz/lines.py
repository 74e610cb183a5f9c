"""A static head view (the interactive page's picture) for PNG/SVG export.

Queries on the left, keys on the right, one line per (query, key, head) with opacity equal to
the attention weight, one colour per head: what BertViz shows, but as an image file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from attnlab.arguments import expect_int
from attnlab.viz.figure import maybe_save, new_figure
from attnlab.viz.inputs import as_labels, as_weights, pick_tokens
from attnlab.viz.safety import MAX_HTML_TOKENS, shorten

# Lines fainter than one 8-bit alpha step are invisible; skipping them keeps files small.
MIN_ALPHA = 1 / 255


def _draw_lines(ax: Any, w: np.ndarray, sel: list[int], yq: np.ndarray, yk: np.ndarray,
                query: int | None) -> None:
    """One line per (query, key) of each selected head of ``w`` (H, Lq, Lk), its alpha the weight;
    lines fainter than MIN_ALPHA are skipped. ``yq`` (Lq,), ``yk`` (Lk,): the columns' heights."""
    palette = colormaps["tab10"]
    rows = range(w.shape[1]) if query is None else [query]
    for h in sel:
        segs, colours = [], []
        base = palette(h % 10)
        for i in rows:
            for j in range(w.shape[2]):
                a = float(w[h, i, j])
                if a >= MIN_ALPHA:
                    segs.append([(0.0, yq[i]), (1.0, yk[j])])
                    colours.append((base[0], base[1], base[2], min(a, 1.0)))
        if segs:
            ax.add_collection(LineCollection(segs, colors=colours,
                                             linewidths=2.0 if query is not None else 1.2))


def _head_view_labels(shape: tuple[int, ...], tokens: Sequence[Any] | None, q_tokens: Sequence[Any] | None,
                      k_tokens: Sequence[Any] | None, heads: Sequence[int] | None, query: int | None,
                      head_names: Sequence[str] | None) -> tuple[list[int], list[str], list[str], list[str]]:
    """The head_view_figure arguments checked against weights of ``shape`` (H, Lq, Lk): the
    heads drawn, every head's name, the query and the key labels."""
    n_heads, lq, lk = shape
    sel = list(range(n_heads)) if heads is None else list(heads)
    for h in sel:
        expect_int("heads", h, 0, n_heads - 1, expected=f"head positions in 0..{n_heads - 1}", got=sel,
                   kinds=(int, np.integer))
    if query is not None and not (isinstance(query, int | np.integer) and 0 <= query < lq):
        raise ValueError(f"query: expected a query position in 0..{lq - 1}, got {query!r}")
    names = ([f"head {h}" for h in range(n_heads)] if head_names is None
             else as_labels("head_names", head_names, n_heads, "one per head"))
    qt, kt = pick_tokens(tokens, q_tokens, k_tokens)
    qlab = as_labels("q_tokens" if q_tokens is not None else "tokens", qt, lq, "one per query")
    klab = as_labels("k_tokens" if k_tokens is not None else "tokens", kt, lk, "one per key")
    return sel, names, qlab, klab


def head_view_figure(
    weights: Any,
    tokens: Sequence[Any] | None = None,
    *,
    q_tokens: Sequence[Any] | None = None,
    k_tokens: Sequence[Any] | None = None,
    heads: Sequence[int] | None = None,
    query: int | None = None,
    head_names: Sequence[str] | None = None,
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Draw ``weights`` (Lq, Lk) or (heads, Lq, Lk) as lines between two token columns.

    ``heads`` selects head positions to draw (default all); ``query`` draws only that query's
    lines (what hovering a token shows in the HTML view).
    """
    w = as_weights("weights", weights, (2, 3))
    if w.ndim == 2:
        w = w[None]  # (Lq, Lk) -> (1, Lq, Lk)
    lq, lk = w.shape[1:]  # (H, Lq, Lk)
    if max(lq, lk) > MAX_HTML_TOKENS:
        raise ValueError(
            f"weights: expected at most {MAX_HTML_TOKENS} tokens per side for a head view, got "
            f"{lq} x {lk}; pass weights[..., :{MAX_HTML_TOKENS}, :{MAX_HTML_TOKENS}]"
        )
    sel, names, qlab, klab = _head_view_labels(w.shape, tokens, q_tokens, k_tokens, heads, query,
                                               head_names)

    n = max(lq, lk)
    fig = new_figure(6.0, min(max(0.24 * n + 1.2, 3.0), 40.0))
    ax = fig.add_subplot()
    # Rows run top to bottom; the shorter column is centred against the longer one.
    yq = (n - 1) / 2 - (np.arange(lq) - (lq - 1) / 2)  # (Lq,)
    yk = (n - 1) / 2 - (np.arange(lk) - (lk - 1) / 2)  # (Lk,)
    x0, x1 = 0.0, 1.0
    palette = colormaps["tab10"]
    _draw_lines(ax, w, sel, yq, yk, query)
    fs = 9 if n <= 40 else 6
    for i, t in enumerate(qlab):
        ax.text(x0 - 0.03, yq[i], shorten(t, 24), ha="right", va="center", fontsize=fs,
                family="monospace", parse_math=False,
                fontweight="bold" if query == i else "normal")
    for j, t in enumerate(klab):
        ax.text(x1 + 0.03, yk[j], shorten(t, 24), ha="left", va="center", fontsize=fs,
                family="monospace", parse_math=False)
    ax.set_xlim(-0.6, 1.6)
    ax.set_ylim(-1, n)
    ax.axis("off")
    if len(sel) > 1 or head_names is not None:
        handles = [Line2D([], [], color=palette(h % 10), lw=2, label=names[h]) for h in sel]
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                  ncol=min(len(sel), 6), fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=10).set_parse_math(False)
    return maybe_save(fig, path)
