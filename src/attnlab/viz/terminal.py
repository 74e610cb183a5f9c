"""Attention in the terminal: shaded cells with token labels (rows queries, columns keys).

:func:`terminal_heatmap` returns a rich renderable: coloured cells on a colour terminal, and
the plain-text version (shade characters) when the console has no colour. :func:`terminal_text`
gives the plain text directly. Tokens are shown with control characters escaped, so a token
holding an ESC sequence cannot restyle the terminal.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from rich.cells import cell_len
from rich.color import Color
from rich.console import Console, ConsoleOptions
from rich.style import Style
from rich.text import Text

from attnlab.viz.inputs import as_weights, axis_labels

# matplotlib's Blues, as in the figures and the HTML pages.
_BLUES = np.array([[247, 251, 255], [222, 235, 247], [198, 219, 239], [158, 202, 225],
                   [107, 174, 214], [66, 146, 198], [33, 113, 181], [8, 81, 156], [8, 48, 107]],
                  dtype=float)
SHADES = " ░▒▓█"
ASCII_SHADES = " .:*#"


def _ramp(t: float) -> tuple[int, int, int]:
    x = min(max(t, 0.0), 1.0) * (len(_BLUES) - 1)
    i = min(int(x), len(_BLUES) - 2)
    c = _BLUES[i] + (_BLUES[i + 1] - _BLUES[i]) * (x - i)
    return int(c[0]), int(c[1]), int(c[2])


def _fit(label: str, width: int) -> str:
    """Cut ``label`` to at most ``width`` terminal cells (wide characters count twice)."""
    if cell_len(label) <= width:
        return label
    out = ""
    for ch in label:
        if cell_len(out + ch) > width - 1:
            break
        out += ch
    return out + "…"


class TerminalHeatmap:
    """A rich renderable heatmap. ``str()`` gives the plain-text version."""

    def __init__(self, weights: np.ndarray, q_labels: list[str], k_labels: list[str], *,
                 show_values: bool, vmin: float, vmax: float, title: str | None,
                 max_label: int, ascii_only: bool = False) -> None:
        self.w = weights  # (Lq, Lk)
        self.q = [_fit(t, max_label) for t in q_labels]
        self.k = [_fit(t, max_label) for t in k_labels]
        self.show_values = show_values
        self.vmin, self.vmax = vmin, vmax
        self.title = title
        self.shades = ASCII_SHADES if ascii_only else SHADES
        texts = [self._value(v) for v in weights.ravel()] if show_values else ["  "]
        self.cell = max(len(t) for t in texts) + (1 if show_values else 0)
        self.label_w = max(cell_len(t) for t in self.q)

    def _value(self, v: float) -> str:
        s = f"{v:.2f}"
        return s[1:] if s.startswith("0.") else s.replace("-0.", "-.")

    def _t(self, v: float) -> float:
        return (v - self.vmin) / (self.vmax - self.vmin)

    def _columns(self, width: int | None) -> int:
        if width is None:
            return self.w.shape[1]
        fit = (width - self.label_w - 2) // self.cell
        return max(1, min(self.w.shape[1], fit))

    def _header(self, ncols: int) -> list[str]:
        """Key labels: on one line when each fits in a cell, else written vertically."""
        pad = " " * (self.label_w + 2)
        keys = self.k[:ncols]
        if all(cell_len(k) < self.cell for k in keys):
            return [pad + "".join(k + " " * (self.cell - cell_len(k)) for k in keys)]
        depth = max(len(k) for k in keys)
        lines = []
        for r in range(depth):
            parts = []
            for k in keys:
                ch = k[r] if r < len(k) else " "
                parts.append(ch + " " * max(self.cell - cell_len(ch), 0))
            lines.append(pad + "".join(parts))
        return lines

    def _cell_text(self, v: float) -> str:
        if self.show_values:
            return self._value(v).rjust(self.cell - 1) + " "
        n = len(self.shades) - 1
        return self.shades[round(min(max(self._t(v), 0.0), 1.0) * n)] * self.cell

    def _footer(self, ncols: int) -> list[str]:
        out = [f"scale {self.vmin:.2f} {self.shades[1:]} {self.vmax:.2f}"
               "   rows: queries, columns: keys"]
        hidden = self.w.shape[1] - ncols
        if hidden:
            out += [f"… {hidden} more key column(s) not shown;",
                    f"widen the terminal or slice, e.g. weights[:, :{ncols}]"]
        return out

    def plain(self, width: int | None = None) -> str:
        ncols = self._columns(width)
        lines = [self.title] if self.title else []
        lines += self._header(ncols)
        for i, lab in enumerate(self.q):
            cells = "".join(self._cell_text(v) for v in self.w[i, :ncols])
            lines.append(" " * (self.label_w - cell_len(lab)) + lab + " │" + cells)
        lines += self._footer(ncols)
        return "\n".join(line.rstrip() for line in lines)

    def __str__(self) -> str:
        return self.plain()

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Text]:
        if console.color_system is None:
            yield Text(self.plain(options.max_width), no_wrap=True, overflow="crop")
            return
        ncols = self._columns(options.max_width)
        if self.title:
            yield Text(self.title, style="bold", no_wrap=True)
        for line in self._header(ncols):
            yield Text(line, style="dim", no_wrap=True, overflow="crop")
        for i, lab in enumerate(self.q):
            row = Text(" " * (self.label_w - cell_len(lab)) + lab + " │", no_wrap=True,
                       overflow="crop")
            for v in self.w[i, :ncols]:
                r, g, b = _ramp(self._t(v))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 140
                text = self._value(v).rjust(self.cell - 1) + " " if self.show_values else " " * self.cell
                row.append(text, Style(bgcolor=Color.from_rgb(r, g, b),
                                       color="white" if dark else "black"))
            yield row
        legend = Text(f"scale {self.vmin:.2f} ", style="dim", no_wrap=True)
        for t in np.linspace(0, 1, 8):
            legend.append("  ", Style(bgcolor=Color.from_rgb(*_ramp(float(t)))))
        legend.append(f" {self.vmax:.2f}   rows: queries, columns: keys", style="dim")
        yield legend
        for line in self._footer(ncols)[1:]:
            yield Text(line, style="dim", no_wrap=True)


def terminal_heatmap(
    weights: Any,
    tokens: Sequence[Any] | None = None,
    *,
    q_tokens: Sequence[Any] | None = None,
    k_tokens: Sequence[Any] | None = None,
    show_values: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
    max_label: int = 12,
    ascii_only: bool = False,
) -> TerminalHeatmap:
    """A rich renderable heatmap of ``weights`` (Lq, Lk): ``rich.print(terminal_heatmap(w, t))``.

    ``show_values`` writes each weight (".42") in its cell. Colours (or shades) run from
    ``vmin`` (default 0, or the minimum if negative) to ``vmax`` (default: the maximum).
    Columns that do not fit the console width are cut, with a note saying how many.
    """
    w = as_weights("weights", weights, 2)  # (Lq, Lk)
    qlab, klab = axis_labels(tokens, q_tokens, k_tokens, w.shape)
    if max_label < 2:
        raise ValueError(f"max_label: expected at least 2, got {max_label}")
    lo = (0.0 if w.min() >= 0 else float(w.min())) if vmin is None else float(vmin)
    hi = float(w.max()) if vmax is None else float(vmax)
    if hi <= lo:
        hi = lo + 1.0
    return TerminalHeatmap(w, qlab, klab, show_values=show_values, vmin=lo, vmax=hi,
                           title=title, max_label=max_label, ascii_only=ascii_only)


def terminal_text(weights: Any, tokens: Sequence[Any] | None = None, *,
                  width: int | None = None, **kwargs: Any) -> str:
    """Plain-text heatmap (no colour, no escape codes); ``width`` cuts columns to fit."""
    return terminal_heatmap(weights, tokens, **kwargs).plain(width)
