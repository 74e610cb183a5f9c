"""``attnlab local-global``: global versus local attention in a model trained with both.

Gemma 3 interleaves five sliding-window layers with one global layer; this command scores a long
text with that layout, every layer global, every layer local, and the window halved and doubled
(``attnlab.inspect.llm.local_global``), each change with its 95 % interval against the trained layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from attnlab.cli.common import (
    FIGURE,
    DeviceOpt,
    ThreadsOpt,
    check_output,
    console,
    load_lm,
    parent_made,
    print_json,
    user_errors,
)


def local_global_command(
    model: Annotated[str, typer.Option("--model", help="gemma3 (Gemma 3 270M) or a Gemma 3 GGUF/folder")]
    = "gemma3",
    tokens: Annotated[int, typer.Option("--tokens", help="score the first N tokens of the text")] = 2048,
    text_file: Annotated[
        Path | None,
        typer.Option("--text-file", help="a long UTF-8 text (default: CPython's reference manual)"),
    ] = None,
    block: Annotated[int, typer.Option("--block", help="tokens per bootstrap block (the interval's unit)")
                     ] = 64,
    png: Annotated[Path | None, typer.Option("--png", help="perplexity per layout with intervals")] = None,
    device: DeviceOpt = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    threads: ThreadsOpt = None,
) -> None:
    """Perplexity with the trained local/global layout, all global, all local, window halved/doubled."""
    names = {"tokens": "--tokens", "text": "--text-file", "model": "--model"}
    with user_errors(as_json, names):
        for name, val, lo in (("--tokens", tokens, 2), ("--block", block, 2)):
            if val < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {val}")
        check_output(png, "--png", FIGURE)
        text = None
        if text_file is not None:
            if not text_file.is_file():
                raise ValueError(f"--text-file: expected an existing text file, got {str(text_file)!r}")
            text = text_file.read_text(encoding="utf-8", errors="strict")
        from attnlab.inspect.llm.local_global import local_global_experiment, local_global_png

        lm = load_lm(model, threads=threads, device=device)
        res = local_global_experiment(lm, text, tokens=tokens, block=block)
        rep: dict[str, Any] = res.to_dict() | {"device": str(lm.device)}
        if png is not None:
            rep["png"] = str(local_global_png(res, parent_made(png)))
    if as_json:
        print_json(rep)
        return
    t = Table(title=f"{rep['model']}: {rep['n_tokens']} tokens, each layer keeps its RoPE base",
              title_justify="left")
    for c in ("layout", "ppl", f"ppl (targets >= {rep['far_from']})", "NLL change [95 % interval]",
              "time (s)"):
        t.add_column(c, justify="left" if c == "layout" else "right")
    for r in rep["rows"]:
        v = r["vs_trained"]
        change = "-" if v is None else f"{v['estimate']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]"
        t.add_row(r["name"], f"{r['ppl']:.2f}", f"{r['ppl_far']:.2f}", change, f"{r['seconds']:.1f}")
    console.print(t, markup=False)
    console.print(f"[dim]intervals: paired NLL difference to the trained layout, blocks of {rep['block']} "
                  f"tokens resampled (95 %)[/]", highlight=False)
    if "png" in rep:
        console.print(f"wrote {rep['png']}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("local-global")(local_global_command)
