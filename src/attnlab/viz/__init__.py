"""Seeing attention: arrays in, pictures out. Imports numpy, matplotlib, rich only.

Static figures (matplotlib ``Figure``; pass ``path=`` ending in .png or .svg to write a file):
:func:`heatmap`, :func:`layer_head_grid`, :func:`token_heads_grid` (one query, every head),
:func:`alignment_plot`, :func:`mask_plot`,
:func:`head_view_figure`. Terminal: :func:`terminal_heatmap` (rich renderable),
:func:`terminal_text`. Interactive, self-contained, offline HTML: :func:`head_view_html`,
:func:`model_view_html`, :func:`compare_view_html`; of a generation: :func:`generation_view_html`,
:func:`token_share_html`. Patterns: :func:`classify_pattern`. In a notebook every page and
figure displays itself; :func:`show` is the explicit call.
Data: :func:`export_json` / :func:`load_json`.

Axes: (layers, heads, q_len, k_len); in a matrix rows are queries and columns are keys.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Names resolve on first use (PEP 562): `from attnlab.viz import terminal_heatmap` must not pull
# in matplotlib (~0.25 s), which every CLI start would otherwise pay. No submodule may share a
# name with a function here: importing attnlab.viz.X sets the package attribute X to the
# module (hence heatmaps.py, not heatmap.py).
_WHERE = {
    "alignment_plot": "alignment",
    "SCHEMA": "export", "SCHEMA_VERSION": "export", "AttentionData": "export",
    "attention_data": "export", "export_json": "export", "load_json": "export",
    "save_figure": "figure",
    "layer_head_grid": "grid",
    "heatmap": "heatmaps",
    "compare_view_html": "html", "head_view_html": "html", "model_view_html": "html",
    "generation_view_html": "html.generation", "token_share_html": "html.generation",
    "head_view_figure": "lines",
    "mask_plot": "maskplot",
    "HtmlPage": "notebook", "ViewFigure": "figure", "show": "notebook",
    "PatternReport": "patterns", "PatternScore": "patterns", "classify_heads": "patterns",
    "classify_pattern": "patterns",
    "MAX_HTML_TOKENS": "safety", "MAX_HTML_VALUES": "safety",
    "token_heads_grid": "token_grid",
    "TerminalHeatmap": "terminal", "terminal_heatmap": "terminal", "terminal_text": "terminal",
}


def __getattr__(name: str) -> object:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'attnlab.viz' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"attnlab.viz.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from attnlab.viz.alignment import alignment_plot
    from attnlab.viz.export import (
        SCHEMA,
        SCHEMA_VERSION,
        AttentionData,
        attention_data,
        export_json,
        load_json,
    )
    from attnlab.viz.figure import ViewFigure, save_figure
    from attnlab.viz.grid import layer_head_grid
    from attnlab.viz.heatmaps import heatmap
    from attnlab.viz.html import compare_view_html, head_view_html, model_view_html
    from attnlab.viz.html.generation import generation_view_html, token_share_html
    from attnlab.viz.lines import head_view_figure
    from attnlab.viz.maskplot import mask_plot
    from attnlab.viz.notebook import HtmlPage, show
    from attnlab.viz.patterns import PatternReport, PatternScore, classify_heads, classify_pattern
    from attnlab.viz.safety import MAX_HTML_TOKENS, MAX_HTML_VALUES
    from attnlab.viz.terminal import TerminalHeatmap, terminal_heatmap, terminal_text
    from attnlab.viz.token_grid import token_heads_grid

__all__ = [
    "MAX_HTML_TOKENS",
    "MAX_HTML_VALUES",
    "SCHEMA",
    "SCHEMA_VERSION",
    "AttentionData",
    "HtmlPage",
    "PatternReport",
    "PatternScore",
    "TerminalHeatmap",
    "ViewFigure",
    "alignment_plot",
    "attention_data",
    "classify_heads",
    "classify_pattern",
    "compare_view_html",
    "export_json",
    "generation_view_html",
    "head_view_figure",
    "head_view_html",
    "heatmap",
    "layer_head_grid",
    "load_json",
    "mask_plot",
    "model_view_html",
    "save_figure",
    "show",
    "terminal_heatmap",
    "terminal_text",
    "token_heads_grid",
    "token_share_html",
]
