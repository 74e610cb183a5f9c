"""Every layer and head of one query position, as small multiples (an LLM user's first question:
"when the model wrote this token, where did each head look?").

One image, not 270 Axes: each (layer, head) is a strip of cells, one per key from left to
right, coloured by weight on one shared scale, with the key it attended to most and that weight
written under it. Rows are layers, columns heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from attnlab.viz.figure import maybe_save, new_figure
from attnlab.viz.inputs import as_indices, as_weights
from attnlab.viz.safety import MAX_PANELS, printable, shorten

_GAP = 0.15  # blank between strips, as a fraction of a strip's width


def _mosaic(w: np.ndarray, gap: int) -> np.ndarray:
    """``w`` (L, H, K) laid out as one image: layer l's heads side by side in row 2l, ``gap``
    blank cells between heads, and a blank row 2l + 1 for the text under each strip."""
    n_layers, n_heads, n_keys = w.shape
    mosaic = np.full((2 * n_layers, n_heads * (n_keys + gap) - gap), np.nan)  # NaN = blank
    for li in range(n_layers):
        for hi in range(n_heads):
            x0 = hi * (n_keys + gap)
            mosaic[2 * li, x0 : x0 + n_keys] = w[li, hi]
    return mosaic


def token_heads_grid(
    rows: Any,
    k_tokens: Sequence[Any],
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    title: str | None = None,
    cmap: str = "Blues",
    path: str | Path | None = None,
) -> Figure:
    """``rows`` (layers, heads, keys): one query's attention in every layer and head.

    ``k_tokens`` labels the keys; ``layers``/``heads`` are the model's indices (default 0..).
    Colours run from 0 to the largest weight of all panels (one scale: heads compare).
    """
    w = as_weights("rows", rows, 3, nonnegative=True)  # (L, H, K)
    n_layers, n_heads, n_keys = w.shape
    if n_layers * n_heads > MAX_PANELS:
        raise ValueError(f"rows: expected at most {MAX_PANELS} (layer, head) panels, got "
                         f"{n_layers}x{n_heads}; pass a slice, e.g. rows[:8]")
    labels = [printable(str(t)) for t in k_tokens]
    if len(labels) != n_keys:
        raise ValueError(f"k_tokens: expected {n_keys} labels (one per key of rows), got {len(labels)}")
    lay = as_indices("layers", layers, n_layers, "one per layer of rows")
    hed = as_indices("heads", heads, n_heads, "one per head of rows")
    # Mosaic: each layer is one strip row plus a text row; each head K cells plus a gap.
    gap = max(1, round(_GAP * n_keys))
    mosaic = _mosaic(w, gap)  # (2L, H * (K + gap) - gap)
    panel_w = min(1.8, 22.0 / n_heads)
    fig = new_figure(1.2 + panel_w * n_heads, 1.4 + 0.42 * n_layers)
    ax = fig.add_subplot()
    if cmap not in colormaps:
        raise ValueError(f"cmap: expected a matplotlib colormap name, got {cmap!r}")
    cm = colormaps[cmap].with_extremes(bad="white")  # the blanks between strips
    norm = Normalize(0.0, max(float(w.max()), 1e-9))
    im = ax.imshow(mosaic, cmap=cm, norm=norm, aspect="auto", interpolation="nearest")
    font = 6.5 if n_heads <= 9 else 5.0
    for li in range(n_layers):
        for hi in range(n_heads):
            k = int(w[li, hi].argmax())
            x = hi * (n_keys + gap) + (n_keys - 1) / 2
            ax.text(x, 2 * li + 1, f"{shorten(labels[k].strip() or repr(labels[k]), 10)} {w[li, hi, k]:.2f}",
                    ha="center", va="center", fontsize=font, parse_math=False)
    ax.set_yticks([2 * li for li in range(n_layers)], [f"L{i}" for i in lay], fontsize=7)
    ax.set_xticks([hi * (n_keys + gap) + (n_keys - 1) / 2 for hi in range(n_heads)],
                  [f"H{h}" for h in hed], fontsize=7)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel(f"each strip: keys 0..{n_keys - 1} left to right; under it the most attended "
                  "key and its weight", fontsize=7)
    if title:
        ax.set_title(title, loc="left", fontsize=9, pad=14).set_parse_math(False)
    fig.colorbar(im, ax=ax, shrink=0.5, label="attention weight")
    return maybe_save(fig, path)
