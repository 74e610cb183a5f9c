"""What each query may see: a boolean mask (True = may attend) drawn cell by cell.

The caller materialises the mask (e.g. ``materialize(causal(), 8, 8)[0, 0]``) so that this
module needs no torch. Rows with no visible key are flagged: attention gives them a context
of exact zeros.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from attnlab.viz.figure import maybe_save, new_figure, set_token_ticks, side
from attnlab.viz.inputs import as_bool_mask, as_labels, pick_tokens

ALLOWED = "#2171b5"
MASKED = "#eef1f5"
EMPTY_ROW = "#d62728"
# Cell borders and per-row counts are drawn while cells stay large enough to read.
DETAIL_MAX = 64


def mask_plot(
    mask: Any,
    tokens: Sequence[Any] | None = None,
    *,
    q_tokens: Sequence[Any] | None = None,
    k_tokens: Sequence[Any] | None = None,
    title: str | None = None,
    show_counts: bool = True,
    path: str | Path | None = None,
) -> Figure:
    """Draw ``mask`` (q_len, kv_len), bool, True = may attend: blue cells are visible keys.

    Leading singleton dims (e.g. ``(1, 1, Lq, Lk)`` from ``materialize``) are dropped.
    ``show_counts`` writes how many keys each query sees at the right of its row (up to 64
    rows); rows that see no key are marked in red.
    """
    m = as_bool_mask("mask", mask)  # (Lq, Lk)
    lq, lk = m.shape
    qt, kt = pick_tokens(tokens, q_tokens, k_tokens)
    qlab = as_labels("q_tokens" if q_tokens is not None else "tokens", qt, lq,
                     f"one per query row of mask, shape {m.shape}", default_prefix="q")
    klab = as_labels("k_tokens" if k_tokens is not None else "tokens", kt, lk,
                     f"one per key column of mask, shape {m.shape}", default_prefix="k")
    detail = max(lq, lk) <= DETAIL_MAX
    fig = new_figure(side(lk) + (1.4 if show_counts else 0.6), side(lq) + 1.0)
    ax = fig.add_subplot()
    ax.imshow(m.astype(np.int8), cmap=ListedColormap([MASKED, ALLOWED]), vmin=0, vmax=1,
              interpolation="nearest", aspect="equal")
    if detail:
        ax.set_xticks(np.arange(-0.5, lk), minor=True)
        ax.set_yticks(np.arange(-0.5, lq), minor=True)
        ax.grid(which="minor", color="white", linewidth=1.0)
        ax.tick_params(which="minor", length=0)
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    set_token_ticks(ax, "x", klab, rotate=60.0 if max(map(len, klab)) > 3 else 0.0)
    set_token_ticks(ax, "y", qlab)
    ax.set_xlabel("key (kv_idx)")
    ax.set_ylabel("query (q_idx)")
    counts = m.sum(axis=1)  # (Lq,) keys visible to each query
    empty = counts == 0
    for row in np.flatnonzero(empty):
        ax.axhspan(row - 0.5, row + 0.5, color=EMPTY_ROW, alpha=0.15, linewidth=0)
    if show_counts and detail:
        for i, c in enumerate(counts):
            ax.text(lk - 0.5 + 0.25, i, str(int(c)), va="center", ha="left", fontsize=8,
                    color=EMPTY_ROW if c == 0 else "#5b6472", clip_on=False)
        ax.text(lk - 0.5 + 0.25, -0.9, "sees", va="bottom", ha="left", fontsize=8,
                color="#5b6472", clip_on=False)
    handles = [Patch(color=ALLOWED, label="may attend"), Patch(color=MASKED, label="masked")]
    if empty.any():
        handles.append(Patch(color=EMPTY_ROW, alpha=0.3, label="no key (zero context)"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3,
              fontsize=8, frameon=False)
    if title:
        ax.set_title(title, loc="left", fontsize=10).set_parse_math(False)
    return maybe_save(fig, path)
