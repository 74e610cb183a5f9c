"""matplotlib plumbing shared by the static figures: Agg figures, token ticks, saving.

Figures are built from :class:`matplotlib.figure.Figure` with an Agg canvas, never through
pyplot, so nothing touches global state or opens a window.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from attnlab.viz.safety import shorten

FORMATS = (".png", ".svg")
# Past this many ticks on an axis, only every k-th token is labelled (they would overlap).
MAX_TICKS = 64
MAX_LABEL = 20


class ViewFigure(Figure):
    """A matplotlib Figure that a notebook shows as a PNG (no pyplot needed)."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", metadata={"Software": "attnlab"})
        return buf.getvalue()


def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """A Figure with its own Agg canvas (no pyplot, no global backend switch); it displays
    itself in a notebook (:class:`ViewFigure`)."""
    fig = ViewFigure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def root_figure(ax: Axes) -> Figure:
    """The top-level Figure that holds ``ax`` (even inside a SubFigure)."""
    fig = ax.figure.figure  # Axes -> (Sub)Figure -> root Figure
    assert isinstance(fig, Figure)
    return fig


def side(n: int, per: float = 0.32, lo: float = 3.0, hi: float = 18.0) -> float:
    """Figure inches for an axis with ``n`` labelled cells."""
    return min(max(2.2 + per * n, lo), hi)


def check_path(path: str | Path, name: str = "path") -> Path:
    p = Path(path)
    if p.suffix.lower() not in FORMATS:
        raise ValueError(
            f"{name}: expected a file name ending in {' or '.join(FORMATS)}, got {str(path)!r}"
        )
    return p


def save_figure(fig: Figure, path: str | Path, *, dpi: int | None = None) -> Path:
    """Write ``fig`` as PNG or SVG, chosen by the suffix of ``path``; returns the path.

    SVG keeps text as ``<text>`` (searchable, escaped by matplotlib) and carries no date,
    so the same figure gives the same bytes.
    """
    p = check_path(path)
    fmt = p.suffix.lower()[1:]
    metadata = {"Date": None} if fmt == "svg" else {"Software": "attnlab"}
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "attnlab"}):
        fig.savefig(p, format=fmt, dpi=dpi or fig.dpi, metadata=metadata)
    return p


def maybe_save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        save_figure(fig, path)
    return fig


def tick_step(n: int, max_ticks: int = MAX_TICKS) -> int:
    return max(1, math.ceil(n / max_ticks))


def set_token_ticks(ax: Axes, axis: Literal["x", "y"], labels: Sequence[str], *, rotate: float = 0.0,
                    fontsize: float | None = None, max_ticks: int = MAX_TICKS) -> None:
    """Label cell centres 0..n-1 with tokens, plain text (no mathtext: ``$`` is literal)."""
    step = tick_step(len(labels), max_ticks)
    idx = list(range(0, len(labels), step))
    text = [shorten(labels[i], MAX_LABEL) for i in idx]
    if fontsize is None:
        fontsize = 9.0 if len(idx) <= 24 else 7.0
    if axis == "x":
        ax.set_xticks(idx)
        ticks = ax.set_xticklabels(text, rotation=rotate, fontsize=fontsize,
                                   ha="left" if rotate else "center", rotation_mode="anchor")
    else:
        ax.set_yticks(idx)
        ticks = ax.set_yticklabels(text, fontsize=fontsize)
    for t in ticks:
        t.set_parse_math(False)  # a token "$x" must not switch on mathtext
    ax.tick_params(axis=axis, length=0)


def annotate_values(ax: Axes, values, cmap, norm, fmt: str = "{:.2f}", fontsize: float = 7.0) -> None:
    """Write each cell's value in a colour that contrasts with the cell."""
    lq, lk = values.shape
    for i in range(lq):
        for j in range(lk):
            r, g, b, _ = cmap(norm(values[i, j]))
            light = 0.299 * r + 0.587 * g + 0.114 * b > 0.55
            ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center",
                    fontsize=fontsize, color="black" if light else "white", parse_math=False)
