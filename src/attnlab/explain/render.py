"""Rich rendering of a walkthrough: one table per step, then what the article printed."""

from __future__ import annotations

import numpy as np
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from attnlab.explain.walkthrough import Perturbation, Walkthrough
from attnlab.viz import terminal_heatmap

DIGITS = 4


def _fmt(x: float) -> str:
    return f"{x:.{DIGITS}f}"


def _matrix_table(title: str, rows: list[str], cols: list[str], data: list[list[float]],
                  *, row_header: str = "") -> Table:
    t = Table(title=Text(title), title_justify="left", show_lines=False)
    t.add_column(Text(row_header), style="bold")
    for c in cols:  # tokens are untrusted text: never rich markup
        t.add_column(Text(c), justify="right")
    for name, vals in zip(rows, data, strict=True):
        t.add_row(Text(name), *(Text(_fmt(x)) for x in vals))
    return t


def _dot_terms(w: Walkthrough, i: int, j: int) -> str:
    terms = " + ".join(f"{a:g}×{b:g}" for a, b in zip(w.q[i], w.k[j], strict=True))
    return f"{w.q_tokens[i]}·{w.k_tokens[j]} = {terms} = {_fmt(w.raw_scores[i][j])}"


def render_walkthrough(w: Walkthrough, focus: int | None = None) -> RenderableType:
    """Step tables. ``focus`` is the query row whose arithmetic is spelled out term by term."""
    row = len(w.q) - 1 if focus is None else focus
    dims = [f"d{i}" for i in range(len(w.q[0]))]
    vdims = w.value_labels or [f"d{i}" for i in range(len(w.v[0]))]
    parts: list[RenderableType] = []
    if w.title:
        parts.append(Text(w.title, style="bold"))
    if w.story:
        parts.append(Text(w.story + (f"  [{w.source}]" if w.source else ""), style="dim"))
    parts.append(_matrix_table("Step 1 - queries Q", w.q_tokens, dims, w.q))
    parts.append(_matrix_table("        keys K", w.k_tokens, dims, w.k))
    parts.append(_matrix_table("        values V", w.k_tokens, vdims, w.v))
    parts.append(_matrix_table("Step 2 - scores Q·Kᵀ (rows: queries, columns: keys)",
                               w.q_tokens, w.k_tokens, w.raw_scores, row_header="q \\ k"))
    parts.append(Text("\n".join(_dot_terms(w, row, j) for j in range(len(w.k)))))
    if w.scale != 1.0:
        parts.append(_matrix_table(f"Step 3 - scaled: Q·Kᵀ × {w.scale:.4g}",
                                   w.q_tokens, w.k_tokens, w.scores, row_header="q \\ k"))
    else:
        parts.append(Text("Step 3 - no scaling (scale = 1), as in the example", style="italic"))
    parts.append(_matrix_table("Step 4 - softmax over each row: weights (each row sums to 1)",
                               w.q_tokens, w.k_tokens, w.weights, row_header="q \\ k"))
    # darker = more attention, as in the seeds' heatmaps
    parts.append(terminal_heatmap(np.asarray(w.weights), q_tokens=w.q_tokens, k_tokens=w.k_tokens,
                                  vmin=0.0, vmax=1.0, show_values=True))
    wrow = w.weights[row]
    terms = " + ".join(f"{x:.4f}×V[{t}]" for x, t in zip(wrow, w.k_tokens, strict=True))
    parts.append(_matrix_table("Step 5 - weighted sum: context = weights · V",
                               w.q_tokens, vdims, w.context))
    parts.append(Text(f"context[{w.q_tokens[row]}] = {terms}"))
    if w.checks:
        parts.append(_claims_table(w))
    return Group(*parts)


def _claims_table(w: Walkthrough) -> Table:
    t = Table(title="What the article prints vs the exact values", title_justify="left")
    for col in ("step", "query", "article prints", "exact", "verdict"):
        t.add_column(col)
    for c in w.checks:
        seed = ", ".join(f"{x:.{c.claim.decimals}f}" for x in c.claim.values)
        exact = ", ".join(_fmt(x) for x in c.exact)
        verdict = (Text("agrees", style="green") if c.agrees else
                   Text(f"differs: exact rounds to "
                        f"{', '.join(f'{x:.{c.claim.decimals}f}' for x in c.exact)}", style="yellow"))
        t.add_row(c.claim.what, Text(w.q_tokens[c.claim.row]), seed, exact, verdict)
    return t


def render_perturbation(p: Perturbation) -> RenderableType:
    b, a = p.before, p.after
    tok = b.q_tokens[p.row]
    t = Table(title=Text(f"Perturbation: q[{tok}][d{p.dim}] {p.delta:+g} "
                         f"({b.q[p.row][p.dim]:g} -> {a.q[p.row][p.dim]:g})"), title_justify="left")
    for c in ("key", "weight before", "weight after", "shift"):
        t.add_column(c, justify="right")
    for j, key in enumerate(b.k_tokens):
        d = a.weights[p.row][j] - b.weights[p.row][j]
        style = "green" if d > 0 else ("red" if d < 0 else "")
        t.add_row(Text(key), _fmt(b.weights[p.row][j]), _fmt(a.weights[p.row][j]),
                  Text(f"{d:+.4f}", style=style))
    top_b = b.k_tokens[max(range(len(b.k)), key=lambda j: b.weights[p.row][j])]
    top_a = a.k_tokens[max(range(len(a.k)), key=lambda j: a.weights[p.row][j])]
    msg = (f'"{tok}" now routes most to "{top_a}" (was "{top_b}")' if top_a != top_b
           else f'"{tok}" still routes most to "{top_a}"')
    return Group(t, Text(msg, style="bold"))


def print_walkthrough(w: Walkthrough, console: Console | None = None, focus: int | None = None) -> None:
    (console or Console()).print(Panel(render_walkthrough(w, focus), title="attnlab walk"))
