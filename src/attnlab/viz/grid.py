"""Layers x heads small multiples: one heatmap per head, on one shared colour scale."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from attnlab.viz.figure import maybe_save, new_figure, set_token_ticks
from attnlab.viz.heatmaps import draw_matrix
from attnlab.viz.inputs import as_indices, as_stack, axis_labels
from attnlab.viz.patterns import classify_pattern
from attnlab.viz.safety import MAX_PANELS

# Token labels are drawn on the outer panels only while they stay readable.
LABEL_MAX_TOKENS = 24


def _frame(ax: Any, name: str, qlab: list[str] | None, klab: list[str] | None) -> None:
    """A panel's title, and token labels on the left (``qlab``) and top (``klab``) edges."""
    ax.set_title(name, fontsize=8, pad=2).set_parse_math(False)
    ax.set_xticks([])
    ax.set_yticks([])
    if qlab is not None:
        set_token_ticks(ax, "y", qlab, fontsize=6)
    if klab is not None:
        ax.xaxis.tick_top()
        set_token_ticks(ax, "x", klab, rotate=90.0, fontsize=6)


def layer_head_grid(
    weights: Any,
    tokens: Sequence[Any] | None = None,
    *,
    q_tokens: Sequence[Any] | None = None,
    k_tokens: Sequence[Any] | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    patterns: bool = False,
    cmap: str = "Blues",
    shared_scale: bool = True,
    panel_size: float = 1.6,
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """One small heatmap per (layer, head) of ``weights`` (layers, heads, Lq, Lk).

    Rows are layers, columns heads; ``layers``/``heads`` give their original indices for the
    titles (after slicing). ``shared_scale`` colours every panel on one scale (0..global max)
    so that heads can be compared; False scales each panel to its own maximum. ``patterns``
    adds each head's :func:`~attnlab.viz.patterns.classify_pattern` label to its title.
    Token labels appear on the left column and top row when there are at most 24 tokens.
    """
    w = as_stack("weights", weights)  # (L, H, Lq, Lk)
    n_layers, n_heads, lq, lk = w.shape
    if n_layers * n_heads > MAX_PANELS:
        raise ValueError(
            f"weights: expected at most {MAX_PANELS} (layer, head) panels, got "
            f"{n_layers}x{n_heads}; pass a slice, e.g. weights[:8] or weights[:, :4]"
        )
    lay = as_indices("layers", layers, n_layers, "one per layer of weights")
    hed = as_indices("heads", heads, n_heads, "one per head of weights")
    qlab, klab = axis_labels(tokens, q_tokens, k_tokens, w.shape)
    labelled = (tokens is not None or q_tokens is not None or k_tokens is not None) \
        and max(lq, lk) <= LABEL_MAX_TOKENS
    extra = 1.2 if labelled else 0.4
    fig = new_figure(panel_size * n_heads + extra + 0.8, panel_size * n_layers + extra + 0.4)
    axes = np.atleast_2d(fig.subplots(n_layers, n_heads, squeeze=False))  # (L, H) of Axes
    vmax = float(w.max()) if shared_scale else None
    im = None
    for li in range(n_layers):
        for hi in range(n_heads):
            ax = axes[li, hi]
            im = draw_matrix(ax, w[li, hi], cmap=cmap, vmin=0.0 if w.min() >= 0 else None,
                             vmax=vmax)
            name = f"L{lay[li]} H{hed[hi]}"
            if patterns:
                name += f" · {classify_pattern(w[li, hi]).label}"
            _frame(ax, name, qlab if labelled and hi == 0 else None, klab if labelled and li == 0 else None)
    if title:
        fig.suptitle(title, fontsize=11).set_parse_math(False)
    if shared_scale and im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6, label="attention weight")
    return maybe_save(fig, path)
