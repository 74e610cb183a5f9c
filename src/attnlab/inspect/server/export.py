"""``attnlab serve``'s save links: the view on screen as a PNG, an SVG or one self-contained HTML.

The page's view lives in a sandboxed iframe that the page cannot read (by design: see
``server``), so the server draws the same thing again from the same arguments plus the
layer/head/query the frame reports. PNG and SVG are the matplotlib pictures the CLI's
``--png`` draws (static head view, layers x heads grid, compare heatmaps); HTML is the
interactive viz page itself, which loads nothing from the network. Files are sent as
attachments, so the browser saves them instead of opening them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from attnlab.inspect.attention_cache import AttentionCache
from attnlab.inspect.comparison import Comparison
from attnlab.inspect.views import inspect_page

MEDIA = {"png": "image/png", "svg": "image/svg+xml", "html": "text/html; charset=utf-8"}
SAVE_VIEWS = ("head", "model", "compare")


def figure_bytes(fig: Any, fmt: str) -> bytes:
    """The bytes ``viz.save_figure`` writes (same SVG settings: text kept as text, no date)."""
    from attnlab.viz import save_figure

    with tempfile.TemporaryDirectory() as tmp:
        return save_figure(fig, Path(tmp) / f"view.{fmt}").read_bytes()


def head_file(cache: AttentionCache, fmt: str, layer: int, heads: list[int] | None) -> bytes:
    """The head view of ``layer``: the interactive page, or its static picture (lines)."""
    if fmt == "html":
        return inspect_page(cache, view="head", layer=layer, heads=heads).encode("utf-8")
    from attnlab.viz import head_view_figure

    chosen = list(range(cache.num_heads)) if heads is None else heads
    fig = head_view_figure(cache.weights[layer, chosen].double().numpy(), cache.tokens,  # (h, T, T)
                           q_tokens=cache.query_labels, head_names=[f"L{layer} H{h}" for h in chosen],
                           title=f"{cache.model}, layer {layer}: {_cut(cache.encoded.text)}")
    return figure_bytes(fig, fmt)


def model_file(cache: AttentionCache, fmt: str) -> bytes:
    """Every layer and head: the model view page, or the layers x heads grid."""
    if fmt == "html":
        return inspect_page(cache, view="model").encode("utf-8")
    from attnlab.viz import layer_head_grid

    # shared_scale=False: the page colours each thumbnail by its own maximum, so does the file.
    fig = layer_head_grid(cache.weights.double().numpy(), cache.tokens, q_tokens=cache.query_labels,
                          patterns=True, shared_scale=False,
                          title=f"{cache.model}: every layer and head ({_cut(cache.encoded.text)})")
    return figure_bytes(fig, fmt)


def compare_file(cmp: Comparison, fmt: str, layer: int, head: int | None, query: int | None) -> bytes:
    """A and B for one layer and head (``None``: the mean over heads), and A − B when the two
    texts have the same number of tokens, as the compare view shows them."""
    a, b = cmp.cache_a, cmp.cache_b
    n_heads = a.num_heads
    if fmt == "html":
        from attnlab.viz import compare_view_html

        return compare_view_html(
            a.weights.double().numpy(), b.weights.double().numpy(), a.tokens, b.tokens,
            names=("A", "B"), texts=(cmp.text_a, cmp.text_b), layer=layer,
            head=n_heads if head is None else head, query=cmp.focus_a if query is None else query,
            title=f"{a.model}: where does {cmp.focus!r} look?").encode("utf-8")
    from attnlab.viz import heatmap
    from attnlab.viz.figure import new_figure, side

    def matrix(c: AttentionCache) -> Any:
        w = c.weights[layer]  # (H, T, T)
        return (w.mean(0) if head is None else w[head]).double().numpy()  # (T, T)

    ma, mb = matrix(a), matrix(b)
    same = ma.shape == mb.shape
    panels = [("A: " + cmp.text_a, ma, a.tokens), ("B: " + cmp.text_b, mb, b.tokens)]
    vmax = max(float(ma.max()), float(mb.max()))
    n = max(len(a.tokens), len(b.tokens))
    cols = 3 if same else 2
    fig = new_figure((side(n) + 1.2) * cols, side(n) + 1.0)
    for i, (name, m, toks) in enumerate(panels):  # one colour scale for A and B, as on the page
        heatmap(m, toks, title=_cut(name), vmin=0.0, vmax=vmax, ax=fig.add_subplot(1, cols, i + 1))
    if same:
        diff = ma - mb
        lim = max(float(abs(diff).max()), 1e-12)
        labels = [x if x == y else f"{x} / {y}" for x, y in zip(a.tokens, b.tokens, strict=True)]
        heatmap(diff, labels, title="A − B (red: more in A)", cmap="RdBu_r", vmin=-lim, vmax=lim,
                value_label="difference", ax=fig.add_subplot(1, 3, 3))
    which = "mean of heads" if head is None else f"head {head}"
    fig.suptitle(f"{a.model}: layer {layer}, {which}", x=0.01, ha="left", fontsize=11)
    return figure_bytes(fig, fmt)


def _cut(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def file_name(view: str, fmt: str, layer: int | None = None, head: int | None = None) -> str:
    """``attnlab-head-layer3.png``: built from ints only, so no user text reaches the header."""
    parts = ["attnlab", view]
    if layer is not None:
        parts.append(f"layer{layer}")
    if head is not None:
        parts.append(f"head{head}")
    return "-".join(parts) + "." + fmt
