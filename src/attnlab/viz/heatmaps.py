"""Heatmap of one attention matrix: rows are queries, columns are keys, labelled with tokens."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from attnlab.viz.figure import (
    annotate_values,
    maybe_save,
    new_figure,
    root_figure,
    set_token_ticks,
    side,
)
from attnlab.viz.inputs import as_weights, axis_labels

# Cell values are printed automatically up to this many cells (beyond, they are unreadable).
AUTO_VALUES_MAX_CELLS = 144


def draw_matrix(ax: Axes, values: np.ndarray, *, cmap: str = "Blues", vmin: float | None = None,
                vmax: float | None = None, show_values: bool = False,
                fmt: str = "{:.2f}") -> AxesImage:
    """``imshow`` with one square cell per (query, key); returns the image for a colorbar."""
    lo = (0.0 if values.min() >= 0 else float(values.min())) if vmin is None else vmin
    hi = float(values.max()) if vmax is None else vmax
    if hi <= lo:
        hi = lo + 1.0  # a constant matrix still gets a valid colour scale
    norm = Normalize(lo, hi)
    cm = colormaps[cmap]
    im = ax.imshow(values, cmap=cm, norm=norm, interpolation="nearest", aspect="equal")
    if show_values:
        annotate_values(ax, values, cm, norm, fmt)
    return im


def heatmap(
    weights: Any,
    tokens: Sequence[Any] | None = None,
    *,
    q_tokens: Sequence[Any] | None = None,
    k_tokens: Sequence[Any] | None = None,
    title: str | None = None,
    cmap: str = "Blues",
    vmin: float | None = None,
    vmax: float | None = None,
    show_values: bool | None = None,
    colorbar: bool = True,
    value_label: str = "attention weight",
    ax: Axes | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Draw ``weights`` (Lq, Lk) as a heatmap with token labels on both axes.

    ``tokens`` labels both axes (self-attention); ``q_tokens``/``k_tokens`` label the rows and
    columns separately (cross-attention). Key labels run along the top, as in a matrix
    printed with a header row. Colours run from ``vmin`` (default 0, or the minimum when
    values are negative, e.g. scores) to ``vmax`` (default: the maximum). Values are written
    in the cells when ``show_values`` is True (default: when there are at most 144 cells).
    Draws into ``ax`` when given, else into a new Figure; writes ``path`` (.png/.svg) if given.
    """
    w = as_weights("weights", weights, 2)  # (Lq, Lk)
    lq, lk = w.shape
    qlab, klab = axis_labels(tokens, q_tokens, k_tokens, w.shape)
    if cmap not in colormaps:
        raise ValueError(f"cmap: expected a matplotlib colormap name, got {cmap!r}")
    if show_values is None:
        show_values = lq * lk <= AUTO_VALUES_MAX_CELLS
    if ax is None:
        fig = new_figure(side(lk) + (1.2 if colorbar else 0.0), side(lq) + 0.6)
        ax = fig.add_subplot()
    else:
        fig = root_figure(ax)
    im = draw_matrix(ax, w, cmap=cmap, vmin=vmin, vmax=vmax, show_values=show_values)
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    set_token_ticks(ax, "x", klab, rotate=60.0 if max(map(len, klab)) > 2 else 0.0)
    set_token_ticks(ax, "y", qlab)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    if title:
        ax.set_title(title, loc="left", fontsize=10).set_parse_math(False)
    if colorbar:
        fig.colorbar(im, ax=ax, shrink=0.8, label=value_label)
    return maybe_save(fig, path)
