"""``attnlab`` entry point. Each subcommand module exposes ``register(app)``.

Nothing here, nor in the modules registered, imports torch (or transformers, matplotlib,
attnlab.backends) at import time: ``attnlab --help``, every subcommand's ``--help`` and every
argument error answer before any of it loads. Commands import what they need when they run
(tests/core/test_cli_startup.py checks it; benchmarks/cli_startup.py times it).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from attnlab.cli import (
    backends_cmd,
    bench_cmd,
    llm_cmds,
    local_global_cmd,
    model_cmds,
    prompt_experiment_cmd,
    seq2seq_cmds,
    streaming_cmd,
    viz_cmds,
    walk_cmd,
)
from attnlab.cli.common import check_argv, write_error

# OpenMP's idle worker threads spin (GNU libgomp's default wait policy); on a machine shared with
# other jobs a spinning second thread made a MiniLM forward 22x and a SmolLM2 decode 5.9x slower
# than one thread, 1.35x and 1.11x when they sleep instead (benchmarks/threads/RESULTS.md). It must
# be set before torch loads, which the CLI does lazily; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# typer >= 0.20 carries its own copy of click (typer._click) and the click package may be absent or
# another copy: click's classes are reached through typer's public names, never `import click`.
_ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _commands(cmd: Any) -> Iterator[Any]:
    yield cmd
    for sub in getattr(cmd, "commands", {}).values():
        yield from _commands(sub)


def _hint(param: Any) -> str:
    """The option as typed (--q-len), or an argument's name as help shows it (TEXT)."""
    opts = [o for o in getattr(param, "opts", ()) if o.startswith("-")]
    return "/".join(opts) if opts else str(getattr(param, "name", None) or "argument").upper()


def _given(e: Exception) -> str | None:
    """The text the user gave, where typer's pydantic coercion kept it (the exception's cause)."""
    errors = getattr(e.__cause__, "errors", None)
    try:
        return repr(errors()[0]["input"]) if callable(errors) else None
    except (LookupError, TypeError):
        return None


def _usage_message(e: Any) -> str:
    """A usage error in attnlab's form: the option typed, what was expected, what was given."""
    name = type(e).__name__
    if name == "NoSuchOption":
        near = f" (did you mean {', '.join(sorted(e.possibilities))}?)" if e.possibilities else ""
        return f"{e.option_name}: expected an option of this command{near}, got an unknown option"
    if name == "BadOptionUsage":  # "Option '--q' requires an argument."
        return f"{e.option_name}: expected a value after it, got none"
    param = getattr(e, "param", None)
    if name == "MissingParameter" and param is not None:
        return f"{_hint(param)}: expected a value (it is required), got none"
    if param is not None:  # BadParameter: an int option given "x", a path that must exist...
        m = re.match(r"(?:Input should be )?(a valid \w+)", e.message)
        given = _given(e)
        if m and given:  # "Input should be a valid integer, unable to parse ..." + the input
            return f"{_hint(param)}: expected {m[1]}, got {given}"
        return f"{_hint(param)}: {e.message}"
    msg, ctx = str(e.format_message()), getattr(e, "ctx", None)
    m = re.fullmatch(r"No such command '(.*)'\.", msg)
    if m and ctx is not None:
        return f"COMMAND: expected one of {', '.join(ctx.command.list_commands(ctx))}, got {m[1]!r}"
    m = re.fullmatch(r"Got unexpected extra argument(?:\(s\)|s)? \((.*)\)", msg)
    if m:
        return f"ARGS: expected no more arguments, got {m[1]!r}"
    return msg


class AttnlabGroup(TyperGroup):
    """typer's group, with readable help and --json-aware usage errors.

    - Boolean flags (``--json``, ``--help``...) take no value, so their help shows no type:
      typer 0.29 prints ``<bool>`` next to every flag, as if one had to write ``--json true``.
    - With ``--json`` on the command line, a usage error (unknown option, an int option given
      ``x``, a missing value) is one JSON object ``{"error": ..., "usage": ...}`` on stdout, like
      every other error under --json, instead of click's usage text; the exit code stays 2.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for cmd in _commands(self):
            # get_help_option caches its Option on the command, so the metavar set here stays.
            for p in [*cmd.params, cmd.get_help_option(cmd.context_class(cmd))]:
                if getattr(p, "is_flag", False) and p.metavar is None:
                    p.metavar = ""  # typer shows a metavar when one is set: "" instead of <bool>

    def _argument_name(self, argv: Sequence[str], i: int) -> str:
        """The name help shows for the positional argument ``argv[i]`` fills (TEXT, PROMPT)."""
        cmd = self.commands.get(argv[0]) if argv else None
        if cmd is None or i == 0:
            return "COMMAND" if i == 0 else f"argument {i + 1}"
        params = list(cmd.params)
        takes_value = {o for p in params if not getattr(p, "is_flag", False) and p.param_type_name == "option"
                       for o in p.opts}
        n, skip = 0, False
        for arg in argv[1:i]:
            if skip:
                skip = False
            elif arg.startswith("-"):
                skip = arg in takes_value  # --model x: x is the option's value
            else:
                n += 1
        names = [p for p in params if p.param_type_name == "argument"]
        if not names:
            return f"argument {i + 1}"
        p = names[min(n, len(names) - 1)]  # the last one may take many (nargs=-1)
        return _hint(p)

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, *a: Any, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        before_dashes = argv[: argv.index("--")] if "--" in argv else argv
        try:
            check_argv(argv, lambda i: self._argument_name(argv, i))  # before any command runs
        except ValueError as e:
            write_error(str(e), as_json="--json" in before_dashes)
            sys.exit(2)
        if not standalone_mode or "--json" not in before_dashes:
            return super().main(argv, prog_name, complete_var, standalone_mode, *a, **extra)
        try:
            rv = super().main(argv, prog_name, complete_var, False, *a, **extra)
        except _ClickException as e:
            ctx = getattr(e, "ctx", None)
            usage = ctx.get_usage().strip() if ctx is not None else None
            write_error(_usage_message(e), as_json=True, extra={"usage": usage} if usage else None)
            sys.exit(getattr(e, "exit_code", 2))
        except typer.Abort:
            sys.stderr.write("Aborted!\n")
            sys.exit(1)
        # standalone_mode=False returns the code of a typer.Exit (user_errors: 2) or the
        # command's return value (None: success).
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    name="attnlab",
    cls=AttnlabGroup,
    help="Attention: compute it, see it, train with it, open real models with it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        from attnlab import __version__  # attnlab/__init__ is light: names resolve on first use

        sys.stdout.write(f"attnlab {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_show_version,
                                          help="print attnlab's version and exit")] = False,
) -> None:
    """Attention: compute it, see it, train with it, open real models with it."""


for module in (walk_cmd, backends_cmd, viz_cmds, model_cmds, llm_cmds, prompt_experiment_cmd, seq2seq_cmds,
               bench_cmd, streaming_cmd, local_global_cmd):
    module.register(app)


def main() -> None:  # pragma: no cover - console entry
    app()
