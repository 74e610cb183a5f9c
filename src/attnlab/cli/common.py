"""Shared CLI helpers: JSON output and turning library errors into clean messages."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def user_errors(as_json: bool = False) -> Iterator[None]:
    """Bad input -> one clear line on stderr (or ``{"error": ...}`` on stdout with --json) and
    exit code 2, never a traceback. OSError covers missing / existing files."""
    try:
        yield
    except (ValueError, TypeError, OSError, KeyError) as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        if as_json:
            sys.stdout.write(json.dumps({"error": msg}, ensure_ascii=False) + "\n")
        else:
            # markup=False: messages hold things like mask[b, h] that rich would eat as tags.
            err_console.print(f"error: {msg}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None


def parse_json_option(name: str, text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}: expected JSON (e.g. [[1, 0], [0, 1]]), got {text!r}: {e.msg}") from None



def split_tokens(text: str | None) -> list[str] | None:
    """Token labels as every command takes them: separated by commas and/or whitespace."""
    if not text:
        return None
    return [t for t in re.split(r"[,\s]+", text.strip()) if t]


def load_lm(model: str | Path | None, *, small: bool = True):
    """Load a model for a CLI command; ``small``: one thread, suited to short inputs on small
    models (an LLM's matrix-vector decode steps are memory-bound and gain from every core)."""
    import os

    import torch

    from attnlab.models.loading import load_model

    if small and not any(v in os.environ for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ATTNLAB_THREADS")):
        # The work here is small (tens to hundreds of tokens): OpenMP's fork/join costs more than
        # it saves, and on a busy machine a second spinning thread made each 20x384 matmul ~100x
        # slower (12 ms vs 125 us, measured). Set OMP_NUM_THREADS to choose otherwise.
        torch.set_num_threads(1)
    elif "ATTNLAB_THREADS" in os.environ:
        torch.set_num_threads(max(1, int(os.environ["ATTNLAB_THREADS"])))
    return load_model(model)


Registrar = Callable[[typer.Typer], None]
