"""Effects with their intervals: one horizontal error-bar panel per measure.

Arrays in (estimates, interval ends), a PNG or SVG out; the prompt experiment's figure. An
interval that covers the null value (the dashed line) is drawn grey: the data do not show an
effect there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnlab.viz.figure import check_path, new_figure, save_figure


@dataclass(frozen=True)
class EffectPanel:
    title: str
    labels: Sequence[str]
    estimates: Sequence[float]
    lows: Sequence[float]
    highs: Sequence[float]
    xlabel: str = "effect"
    null: float = 0.0


def effects_figure(panels: Sequence[EffectPanel], path: str | Path | None = None):
    """A column of panels; each row an estimate with its interval. Returns the Figure."""
    if not panels:
        raise ValueError("panels: expected at least one panel, got none")
    if path is not None:
        path = check_path(path)
    heights = [max(len(p.labels), 1) * 0.32 + 0.9 for p in panels]
    fig = new_figure(8.5, sum(heights))
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, p in zip(axes, panels, strict=True):
        n = len(p.labels)
        if not (len(p.estimates) == len(p.lows) == len(p.highs) == n):
            raise ValueError(f"panel {p.title!r}: expected {n} estimates, lows and highs (one per label), "
                             f"got {len(p.estimates)}, {len(p.lows)}, {len(p.highs)}")
        est, lo, hi = (np.asarray(x, dtype=float) for x in (p.estimates, p.lows, p.highs))
        y = np.arange(n)[::-1]
        shown = (lo > p.null) | (hi < p.null)
        for colour, keep in (("tab:blue", shown), ("0.55", ~shown)):
            if keep.any():
                err = np.vstack([est[keep] - lo[keep], hi[keep] - est[keep]])  # (2, k)
                ax.errorbar(est[keep], y[keep], xerr=np.clip(err, 0, None), fmt="o", color=colour,
                            capsize=3, markersize=4)
        ax.axvline(p.null, color="0.3", linestyle="--", linewidth=0.8)
        ax.set_yticks(y, [str(s) for s in p.labels], fontsize=8)
        ax.set_title(p.title, fontsize=9, loc="left")
        ax.set_xlabel(p.xlabel, fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
    if path is not None:
        save_figure(fig, path)
    return fig
