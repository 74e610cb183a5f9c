"""``attnlab`` entry point. Each subcommand module exposes ``register(app)``."""

from __future__ import annotations

import typer

from attnlab.cli import (
    backends_cmd,
    bench_cmd,
    llm_cmds,
    model_cmds,
    seq2seq_cmds,
    streaming_cmd,
    viz_cmds,
    walk_cmd,
)

app = typer.Typer(
    name="attnlab",
    help="Attention: compute it, see it, train with it, open real models with it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for module in (walk_cmd, backends_cmd, viz_cmds, model_cmds, llm_cmds, seq2seq_cmds, bench_cmd,
               streaming_cmd):
    module.register(app)


def main() -> None:  # pragma: no cover - console entry
    app()
