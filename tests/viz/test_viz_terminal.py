"""Terminal heatmap: labels, shading, values, colour cells, plain fallback, width, safety."""

from __future__ import annotations

import io

import numpy as np
from rich.console import Console

from attnlab.viz import terminal_heatmap, terminal_text

TOKENS = ["The", "cat", "sat", "on", "it"]


def weights() -> np.ndarray:
    w = np.full((5, 5), 0.05)
    w[3, 1] = 0.8  # "on" -> "cat": the strongest cell
    return w / w.sum(axis=1, keepdims=True)


def grid_rows(text: str) -> dict[str, str]:
    """Row label -> the cells after the separator, from the plain rendering."""
    rows = {}
    for line in text.splitlines():
        if "│" in line:
            label, cells = line.split("│", 1)
            rows[label.strip()] = cells
    return rows


def test_plain_text_labels_and_shades() -> None:
    w = weights()
    text = terminal_text(w, TOKENS)
    rows = grid_rows(text)
    assert list(rows) == TOKENS  # every query labelled, in order
    cells = rows["on"]
    assert cells[2:4] == "██"  # column 1 (2 characters per cell) is the darkest
    assert "█" not in rows["The"]
    # key labels are written vertically above the columns: first letters of the tokens
    header = text.splitlines()[0]
    assert header.split() == ["T", "c", "s", "o", "i"]
    assert "rows: queries, columns: keys" in text


def test_values_in_cells() -> None:
    w = weights()
    rows = grid_rows(terminal_text(w, TOKENS, show_values=True))
    assert rows["on"].split() == [f"{v:.2f}".removeprefix("0") for v in w[3]]


def test_colour_rendering_darkest_cell() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, color_system="truecolor", width=100)
    console.print(terminal_heatmap(weights(), TOKENS, title="demo"))
    segments = list(console.render(terminal_heatmap(weights(), TOKENS)))
    cells = [s for s in segments if s.style is not None and s.style.bgcolor is not None
             and s.text.strip() == "" and len(s.text) == 2]
    lum = [sum(s.style.bgcolor.get_truecolor()) for s in cells[:25]]
    assert int(np.argmin(lum)) == 3 * 5 + 1  # row "on", column "cat"
    out = buf.getvalue()
    assert "\x1b[" in out and "demo" in out and "cat" in out


def test_no_colour_console_gets_plain_text() -> None:
    buf = io.StringIO()
    Console(file=buf, color_system=None, width=100).print(terminal_heatmap(weights(), TOKENS))
    assert "\x1b[" not in buf.getvalue()
    assert grid_rows(buf.getvalue())["on"][2:4] == "██"


def test_escape_sequences_in_tokens_are_shown_not_run() -> None:
    evil = "\x1b[2J\x1b]0;pwned\x07"
    text = terminal_text(np.eye(2), ["ok", evil], max_label=40)
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b[2J\\x1b]0;pwned\\x07" in text


def test_narrow_width_cuts_columns_with_a_note() -> None:
    w = np.full((3, 40), 1 / 40)
    text = terminal_text(w, q_tokens=["a", "b", "c"], k_tokens=[f"k{i}" for i in range(40)],
                         width=30)
    lines = text.splitlines()
    assert all(len(line) <= 60 for line in lines)
    assert all(len(line) <= 30 for line in lines if "│" in line)
    assert "more key column(s) not shown" in text and "weights[:, :" in text
    shown = len(grid_rows(text)["a"]) // 2
    assert f"{40 - shown} more key column(s)" in text


def test_ascii_shades_and_long_labels() -> None:
    text = terminal_text(np.eye(2), ["short", "a-very-long-token-name"], ascii_only=True,
                         max_label=8)
    assert "#" in text and "█" not in text
    assert "a-very-…" in text
