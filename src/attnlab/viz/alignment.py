"""Seq2seq alignment plot: source words across the top, target words down the side.

Drawn like Figure 3 of Bahdanau, Cho & Bengio (2015): each row is one decoder step (target
word, the query) and shows its attention over the encoder states (source words, the keys);
white is high. A reference alignment can be outlined to check the learned one against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from attnlab.viz.figure import maybe_save, new_figure, set_token_ticks, side
from attnlab.viz.heatmaps import draw_matrix
from attnlab.viz.inputs import as_labels, as_weights, to_numpy


def _reference_cells(reference: Any, shape: tuple[int, int]) -> list[tuple[int, int]]:
    """(target, source) cells from a bool (Lt, Ls) matrix or a list of (target, source) pairs."""
    ref = to_numpy("reference", reference)
    if ref.dtype == np.bool_:
        if ref.shape != shape:
            raise ValueError(f"reference: expected a bool matrix of shape {shape}, got {ref.shape}")
        return [(int(i), int(j)) for i, j in np.argwhere(ref)]
    if ref.ndim != 2 or ref.shape[1] != 2 or not np.issubdtype(ref.dtype, np.integer):
        raise ValueError(
            f"reference: expected a bool {shape} matrix or (target, source) integer pairs, "
            f"got dtype {ref.dtype} shape {ref.shape}"
        )
    for i, j in ref:
        if not (0 <= i < shape[0] and 0 <= j < shape[1]):
            raise ValueError(f"reference: pair ({i}, {j}) is outside weights of shape {shape}")
    return [(int(i), int(j)) for i, j in ref]


def alignment_plot(
    weights: Any,
    source_tokens: Sequence[Any] | None = None,
    target_tokens: Sequence[Any] | None = None,
    *,
    reference: Any = None,
    show_argmax: bool = False,
    cmap: str = "gray",
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Plot cross-attention ``weights`` (target_len, source_len): rows are target words.

    ``reference``: the gold alignment, outlined in red (bool (Lt, Ls) or (target, source)
    pairs). ``show_argmax`` marks each target word's most attended source word with a dot.
    """
    w = as_weights("weights", weights, 2)  # (Lt, Ls)
    lt, ls = w.shape
    src = as_labels("source_tokens", source_tokens, ls,
                    f"one per source column of weights, shape {w.shape}")
    tgt = as_labels("target_tokens", target_tokens, lt,
                    f"one per target row of weights, shape {w.shape}")
    fig = new_figure(side(ls) + 1.0, side(lt) + 0.8)
    ax = fig.add_subplot()
    im = draw_matrix(ax, w, cmap=cmap, vmin=0.0 if w.min() >= 0 else None)
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    set_token_ticks(ax, "x", src, rotate=60.0 if max(map(len, src)) > 2 else 0.0)
    set_token_ticks(ax, "y", tgt)
    ax.set_xlabel("source")
    ax.set_ylabel("target")
    if reference is not None:
        for i, j in _reference_cells(reference, (lt, ls)):
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#d62728",
                                   linewidth=1.6, label="reference"))
    if show_argmax:
        best = w.argmax(axis=1)  # (Lt,) source index per target word
        ax.plot(best, np.arange(lt), "o", color="#ff7f0e", markersize=4, label="argmax")
    if title:
        ax.set_title(title, loc="left", fontsize=10, pad=12).set_parse_math(False)
    fig.colorbar(im, ax=ax, shrink=0.8, label="attention weight")
    return maybe_save(fig, path)
