"""A readable picture of a long generation's attention: the answer in panels of rows.

One heatmap of every answer token over every key shrinks each cell to a pixel past a few
hundred tokens and labels only every k-th token. Here the answer is cut into panels of at most
:data:`ROWS` tokens; each panel shows the keys near its tokens (the last :data:`KEYS` positions),
and two summary columns for the rest: ``<prompt>`` (all prompt keys) and ``<earlier>`` (answer
keys before the window). Every row and column is labelled. Colours share one scale, clipped at
the 99th percentile of the single-key cells (sink tokens would otherwise wash out the rest);
the summary columns are sums and usually sit at the top of the scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROWS = 48  # answer tokens per panel
KEYS = 62  # single keys per panel, ending at its last position: with the two summary columns,
# 64 columns, the most a heatmap labels one by one (viz.figure.MAX_TICKS)
CELL = 0.16  # inches per cell: 7-pt labels stay legible


Panel = tuple[np.ndarray, list[str], list[str]]  # (rows, columns) weights, row labels, column labels


def panels(w: np.ndarray, labels: list[str], prompt_len: int) -> list[Panel]:
    """``w`` (T, N): row i is position prompt_len - 1 + i over keys 0..N-1. Per panel: the
    matrix (rows, columns), its row labels (the tokens produced) and column labels."""
    P = prompt_len
    out = []
    for r0 in range(0, w.shape[0], ROWS):
        r1 = min(r0 + ROWS, w.shape[0])
        last = P - 1 + r1 - 1  # the panel's last position: its keys end here
        ws = max(P, last + 1 - KEYS)  # first single answer key shown
        cols = [w[r0:r1, :P].sum(1, keepdims=True)]  # (rows, 1): <prompt>
        names = ["<prompt>"]
        if ws > P:
            cols.append(w[r0:r1, P:ws].sum(1, keepdims=True))
            names.append("<earlier>")
        cols.append(w[r0:r1, ws : last + 1])
        names += labels[ws : last + 1]
        out.append((np.concatenate(cols, axis=1), labels[P + r0 : P + r1], names))
    return out


def long_generation_png(w: np.ndarray, labels: list[str], prompt_len: int, path: str | Path,
                        title: str) -> Path:
    from attnlab.viz import heatmap
    from attnlab.viz.figure import new_figure, save_figure

    parts = panels(w, labels, prompt_len)
    single = np.concatenate([m[:, -min(KEYS, m.shape[1] - 1):].ravel() for m, _, _ in parts])
    vmax = float(np.percentile(single, 99)) or 1.0
    widest = max(m.shape[1] for m, _, _ in parts)
    heights = [m.shape[0] * CELL + 1.6 for m, _, _ in parts]
    fig = new_figure(widest * CELL + 3.0, sum(heights) + 0.6)
    axes = fig.subplots(len(parts), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (m, rows, cols), i in zip(axes, parts, range(0, w.shape[0], ROWS), strict=True):
        heatmap(np.minimum(m, vmax), q_tokens=rows, k_tokens=cols, ax=ax, colorbar=False,
                vmin=0.0, vmax=vmax, show_values=False,
                title=f"answer tokens {i}-{i + m.shape[0] - 1}" if i else title)
    fig.colorbar(axes[0].images[0], ax=list(axes), shrink=0.3,
                 label=f"attention weight (colour clipped at {vmax:.2f})")
    return save_figure(fig, path)
