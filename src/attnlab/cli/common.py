"""Shared CLI helpers: JSON output and turning library errors into clean messages."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from attnlab.arguments import ArgumentError
from attnlab.echo import shown

ThreadsOpt = Annotated[int | None, typer.Option(
    "--threads", help="torch threads (default: the cores this process may use, or OMP_NUM_THREADS "
                      "if fewer)")]

DeviceOpt = Annotated[str, typer.Option(
    "--device", help="where the model runs: cpu (default), cuda or cuda:N (an NVIDIA GPU: attention through "
                     "torch SDPA; float32 weights only; not yet run on a GPU by attnlab's tests)")]

console = Console()
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def log(message: str) -> None:
    """A progress or note line on stderr, as printed (no rich markup: a path may hold [brackets])."""
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)


def parent_made(path: Path) -> Path:
    """``path``, once the folder it goes in exists (made with its parents): a checked output
    path (:func:`check_output`) is made only when something is written there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


PATH_CHARS = 1024  # a path is shown whole up to this: a cut name is no use
FIGURE = (".png", ".svg")
PAGE = (".html", ".htm")


# Quoted values in a library's message past a path's length: a user's input, not a file name.
_LONG_QUOTE = re.compile(f"'[^'\n]{{{PATH_CHARS + 1},}}'|\"[^\"\n]{{{PATH_CHARS + 1},}}\"")


def _cut_echoes(msg: str) -> str:
    """A long quoted value inside a library's message, cut as ``shown`` cuts it; then the whole
    line at 2,000 characters (a library may echo a value unquoted)."""
    msg = _LONG_QUOTE.sub(lambda m: shown(m.group()[1:-1]), msg)
    return msg if len(msg) <= 2000 else f"{msg[:1999]}… ({len(msg):,} characters)"


def write_error(msg: str, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    """One line: ``{"error": msg}`` on stdout under --json, else ``error: msg`` on stderr."""
    msg = _cut_echoes(msg)
    if as_json:
        sys.stdout.write(json.dumps({"error": msg} | (extra or {}), ensure_ascii=False) + "\n")
    else:
        # markup=False: messages hold things like mask[b, h] that rich would eat as tags.
        err_console.print(f"error: {msg}", markup=False, highlight=False, soft_wrap=True)


def as_option(error: str | BaseException, names: Mapping[str, str] | None) -> str:
    """Library messages start with the parameter's name (``k: expected a positive int``); the
    user typed an option (``--top``), so the name is swapped for the option's."""
    msg = str(error)
    if isinstance(error, ArgumentError):  # the check says which argument it refused
        option = names.get(error.name) if names else None
        return option + msg[len(error.name):] if option and msg.startswith(error.name) else msg
    # Fallback for errors that carry no name (OSError, a library's own ValueError, a KeyError's
    # text): read it off the message's "name: " prefix.
    head, sep, rest = msg.partition(": ")
    if not sep or not names:
        return msg
    if head in names:
        return f"{names[head]}: {rest}"
    first, space, tail = head.partition(" ")  # "focus (text B): ..." -> "--focus (text B): ..."
    return f"{names[first]}{space}{tail}: {rest}" if first in names else msg


@contextmanager
def user_errors(as_json: bool = False, names: Mapping[str, str] | None = None) -> Iterator[None]:
    """Bad input -> one clear line on stderr (or ``{"error": ...}`` on stdout with --json) and
    exit code 2, never a traceback. OSError covers missing / existing files. ``names`` maps the
    library's parameter names to the command's options, e.g. ``{"k": "--top"}``."""
    try:
        yield
    except (ValueError, TypeError, OSError, KeyError) as e:
        said = str(e.args[0]) if isinstance(e, KeyError) and e.args else e  # KeyError's str() quotes
        write_error(as_option(said, names), as_json)
        raise typer.Exit(code=2) from None


def check_output(path: Path | None, option: str, suffixes: tuple[str, ...] | None = None) -> Path | None:
    """Refuse an output path before any model loads or any run starts, naming ``option``: a file
    (``suffixes`` given) with the right extension that is not a folder, or a folder (``suffixes``
    None) that is not a file; either way inside a folder that exists or can be made (no file on
    the way: ``existing.txt/g.html``) and that this user may write in. Creates nothing."""
    if path is None:
        return None
    given = shown(path, PATH_CHARS)
    try:
        if suffixes is not None:
            if path.suffix.lower() not in suffixes:
                raise ValueError(f"{option}: expected a file name ending in {' or '.join(suffixes)}, "
                                 f"got {given}")
            if path.is_dir():
                raise ValueError(f"{option}: expected a file name, got the folder {given}")
            if path.exists() and not os.access(path, os.W_OK):
                raise ValueError(f"{option}: expected a file you may overwrite, got the read-only {given}")
        elif path.exists() and not path.is_dir():
            raise ValueError(f"{option}: expected a folder (new or existing), got the file {given}")
        folder = path if suffixes is None else path.parent
        above = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
        if not above.is_dir():
            raise ValueError(f"{option}: expected a path through folders, got {given}, where "
                             f"{shown(above, PATH_CHARS)} is a file")
        if not os.access(above, os.W_OK | os.X_OK):
            raise ValueError(f"{option}: expected a folder you may write in, got {given} "
                             f"({shown(above, PATH_CHARS)} is not writable)")
    except OSError as e:  # a name too long for the file system, a loop of links...
        raise ValueError(f"{option}: expected a path this system can write, got {given}: "
                         f"{e.strerror or e}") from None
    return path


def check_argv(argv: Sequence[str], positional: Callable[[int], str] | None = None) -> None:
    """Refuse bytes that are not UTF-8 in the command line. Python hands them over as lone
    surrogates (U+DC80..U+DCFF), which failed deep inside as "TextInputSequence must be str".
    ``positional(i)`` names the argument ``argv[i]`` fills when no option precedes it (TEXT)."""
    for i, arg in enumerate(argv):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as e:
            name, _, value = arg.partition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
            if not name:
                prev = argv[i - 1] if i else ""
                name = prev if prev.startswith("--") else (
                    positional(i) if positional else f"argument {i + 1}")
            start = e.start - (len(arg) - len(value))
            byte = ord(arg[e.start]) - 0xDC00 if 0xDC80 <= ord(arg[e.start]) <= 0xDCFF else None
            what = f"the byte 0x{byte:02x}" if byte is not None else f"U+{ord(arg[e.start]):04X}"
            raise ValueError(f"{name}: expected UTF-8 text, got {what} at character {start} "
                             f"(set the terminal or the file to UTF-8)") from None


def _finite(name: str, text: str) -> float:
    x = float(text)
    if not math.isfinite(x):  # 1e400: json reads it as inf, and --json would print Infinity
        shown = text if len(text) <= 24 else f"{text[:12]}... ({len(text)} characters)"
        raise ValueError(f"{name}: expected finite numbers (at most 1.8e308 in size), got {shown}")
    return x


def _no_constants(name: str, text: str) -> Any:
    raise ValueError(f"{name}: expected JSON numbers, got {text} (not JSON, and not finite)")


def parse_json(name: str, text: str) -> Any:
    """Strict JSON as the user gives it: NaN, Infinity and numbers beyond float64 are refused
    (Python's json takes them, and they come back out as invalid JSON under --json)."""
    try:
        # an int of 300+ digits is past float64 too (torch turns it into inf): checked like a float
        return json.loads(text, parse_float=lambda s: _finite(name, s),
                          parse_int=lambda s: int(_finite(name, s)) if len(s) > 300 else int(s),
                          parse_constant=lambda s: _no_constants(name, s))
    except json.JSONDecodeError as e:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise ValueError(f"{name}: expected JSON (e.g. [[1, 0], [0, 1]]), got {shown!r}: {e.msg}") from None


def parse_json_option(name: str, text: str | None) -> Any:
    if text is None:
        return None
    return parse_json(name, text)



def split_tokens(values: str | Sequence[str] | None) -> list[str] | None:
    """A user's list as every command takes it: items separated by commas and/or whitespace, in
    one value (``a,b c``) or across a repeated option (``--cases a --cases b,c``); None when
    nothing was given (None, "" or no values), [] when only separators were."""
    if not values:
        return None
    return [t for v in ([values] if isinstance(values, str) else values) for t in re.split(r"[,\s]+", v) if t]


def split_ints(name: str, text: str, lo: int = 0) -> list[int]:
    """Integers as every command takes them (``0,1,4`` or ``0 1 4``), each >= ``lo``."""
    try:
        vals = [int(x) for x in split_tokens(text) or []]
    except ValueError:
        raise ValueError(f"{name}: expected comma-separated integers (e.g. 0,1,4), got {text!r}") from None
    if not vals or any(v < lo for v in vals):
        raise ValueError(f"{name}: expected integers >= {lo}, got {text!r}")
    return vals


def use_threads(threads: int | None) -> int:
    """Every command's ``--threads``, set in one place (:func:`attnlab.threads.set_threads`)."""
    from attnlab.threads import set_threads

    return set_threads(threads, "--threads")


def load_lm(model: str | Path | None, *, threads: int | None = None, weights: str = "float32",
            device: str = "cpu"):
    """Set ``--threads`` (default: the available cores), check ``--device`` (with ``--weights``),
    then load a model for a CLI command."""
    from attnlab.models.device import resolve_device
    from attnlab.models.loading import load_model
    from attnlab.models.quantized import check_format

    use_threads(threads)
    resolve_device(device, check_format(weights, "--weights"), name="--device", weights_name="--weights")
    try:
        return load_model(model, weights=weights, device=device)
    except (OSError, ValueError) as e:  # the library says model:, the user typed --model
        msg = as_option(e, {"model": "--model", "weights": "--weights", "device": "--device"})
        if msg != str(e):  # an OSError with an errno keeps its own "[Errno n] ..." form
            e.args = (msg,)
        raise


Registrar = Callable[[typer.Typer], None]
