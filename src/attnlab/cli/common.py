"""Shared CLI helpers: JSON output and turning library errors into clean messages."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def user_errors() -> Iterator[None]:
    """Bad input -> one clear line on stderr and exit code 2, never a traceback."""
    try:
        yield
    except (ValueError, TypeError, FileNotFoundError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        err_console.print(f"[bold red]error:[/] {escape(str(msg))}", highlight=False)
        raise typer.Exit(code=2) from None


def parse_json_option(name: str, text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}: expected JSON (e.g. [[1, 0], [0, 1]]), got {text!r}: {e.msg}") from None


Registrar = Callable[[typer.Typer], None]
