"""viz.tables: one Table rendered to the terminal, markdown and JSON; user text in it is never
read as rich markup, and a markdown cell cannot break its row."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from rich.console import Console

from attnlab.viz.tables import Table, json_tables, markdown, print_blocks


def _table() -> Table:
    return Table("answers for [red]x[/]", ["run", "answer"],
                 [["base", "a | b\nc"], ["added", "[bold]not bold[/bold]"]], note="mass in [0, 1]")


def _terminal(blocks, **kw) -> str:
    buf = io.StringIO()
    print_blocks(Console(file=buf, width=100, color_system=None), blocks, **kw)
    return buf.getvalue()


def test_the_terminal_shows_the_text_as_typed():
    text = _terminal([_table(), "a paragraph with [dim]brackets[/]"], title="the [b]title[/b]")
    lines = text.splitlines()
    assert lines[0] == "the [b]title[/b]"
    assert "answers for [red]x[/]" in lines[1]
    for typed in ("[bold]not bold[/bold]", "mass in [0, 1]", "a paragraph with [dim]brackets[/]"):
        assert typed in text


def test_markdown_sections_and_cells():
    md = markdown([_table(), "closing words"], title="Report")
    assert md.splitlines() == [
        "# Report", "",
        "## answers for [red]x[/]", "",
        "mass in [0, 1]", "",
        "| run | answer |", "|---|---|",
        "| base | a \\| b c |",
        "| added | [bold]not bold[/bold] |", "",
        "closing words",
    ]
    assert md.endswith("closing words\n")


def test_json_carries_what_the_table_says_not_how_it_looks():
    t = _table()
    t.ruled = True
    d = json_tables(["a paragraph", t])
    assert d == [{"title": t.title, "columns": t.columns, "rows": t.rows, "note": t.note}]
    assert json.loads(json.dumps(d)) == d


def test_importing_it_loads_no_torch():
    code = "import sys, attnlab.viz.tables; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
