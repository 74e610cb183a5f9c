"""``attnlab backends``: what each kernel can do, and how ``auto`` chooses."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from attnlab.cli.common import console, print_json


def backends_command(
    explain: Annotated[bool, typer.Option("--explain", help="print the auto rule")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List attention backends and their declared capabilities."""
    from attnlab.backends import registry  # imports torch: only once the command runs

    rows = []
    for name in registry.backend_names():
        b = registry.get_backend(name)
        rows.append({"name": name, "description": b.description, "auto_rank": b.auto_rank,
                     **b.capabilities.__dict__})
    rule = registry.explain_auto()  # generated from the ranks and predicates auto uses
    if as_json:
        print_json({"backends": rows, "auto_rule": rule if explain else None})
        return
    caps = list(registry.Capabilities().__dict__)
    t = Table(title="attnlab backends", show_lines=True)
    t.add_column("name", style="bold")
    t.add_column("can")
    t.add_column("cannot", style="dim")
    t.add_column("description")
    for r in rows:
        t.add_row(r["name"], ", ".join(c for c in caps if r[c]),
                  ", ".join(c for c in caps if not r[c]) or "-", r["description"])
    console.print(t)
    if explain:
        console.print(rule, markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("backends")(backends_command)
