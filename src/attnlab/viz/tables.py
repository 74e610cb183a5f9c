"""A report's rows, typed once and rendered here alone: to the terminal (rich), to markdown and
to JSON.

A report builds its blocks once from its typed result: :class:`Table` s (rows of cells already
formatted, so every rendering shows the same digits) and paragraphs (``str``) between them. The
command prints them with :func:`print_blocks`, the report's file is :func:`markdown` of the same
blocks, and ``--json`` carries :meth:`Table.to_dict`. Nothing here reads rich markup from a
cell, a title or a note: they hold user text (added words, answers, file names).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table as RichTable


@dataclass
class Table:
    """Rows of formatted cells under a title, with a note on how to read them."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""
    ruled: bool = False  # a rule between rows: rows of several lines (answers side by side)

    def to_dict(self) -> dict[str, Any]:
        """What the table says (``ruled`` is only how it looks)."""
        return {"title": self.title, "columns": self.columns, "rows": self.rows, "note": self.note}


Block = Table | str  # a table, or a paragraph (lines of text)


def rich_table(t: Table) -> RichTable:
    """``t`` as a rich table: the note below it; long cells fold instead of being cut."""
    from rich.table import Table as RichTable
    from rich.text import Text

    # Title and note as Text, so no markup is read in them; cells stay str (print_blocks turns
    # markup off) so that rich still highlights their numbers.
    rt = RichTable(title=Text(t.title, style="table.title"), title_justify="left",
                   caption=Text(t.note, style="table.caption") if t.note else None,
                   caption_justify="left", show_lines=t.ruled)
    for c in t.columns:
        rt.add_column(c, overflow="fold")
    for r in t.rows:
        rt.add_row(*r)
    return rt


def print_blocks(console: Console, blocks: Sequence[Block], *, title: str = "",
                 style: str | None = None) -> None:
    """The terminal: ``title`` in bold, then each block; paragraphs in ``style`` (e.g. "dim")."""
    if title:
        console.print(title, style="bold", markup=False, highlight=False)
    for b in blocks:
        if isinstance(b, Table):
            console.print(rich_table(b), markup=False)
        else:
            console.print(b, style=style, markup=False, highlight=False)


def markdown(blocks: Sequence[Block], *, title: str = "") -> str:
    """A markdown page: ``# title``, then each table as a section (``## title``, note, table) and
    each paragraph as it is."""
    out = [f"# {title}", ""] if title else []
    for b in blocks:
        out += markdown_table(b) if isinstance(b, Table) else [b, ""]
    return "\n".join(out)


def markdown_table(t: Table) -> list[str]:
    """The lines of one table's section; a cell's ``|`` escaped and its line breaks made spaces."""
    out = [f"## {t.title}", ""]
    if t.note:
        out += [t.note, ""]
    out += ["| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
    out += ["| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in r) + " |" for r in t.rows]
    out.append("")
    return out


def json_tables(blocks: Sequence[Block]) -> list[dict[str, Any]]:
    """The tables of ``blocks``, JSON-ready (paragraphs are the report's own fields)."""
    return [b.to_dict() for b in blocks if isinstance(b, Table)]
