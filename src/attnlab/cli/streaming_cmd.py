"""``attnlab streaming``: attention sinks and window attention on a real LLM (StreamingLLM).

Xiao et al. 2023: perplexity under full attention, a sliding window of W keys, and the window
plus K "sink" tokens (the first positions, always visible), one teacher-forced pass each over a
long text; plus the share of attention each layer puts on the first token.
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
    split_ints,
    user_errors,
)

SPARK = "▁▂▃▄▅▆▇█"


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ValueError(f"--text-file: expected an existing text file, got {str(path)!r}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--text-file: expected UTF-8 text, got undecodable bytes in {str(path)!r} "
                         f"({e.reason})") from None


def streaming_command(
    text_file: Annotated[
        Path | None,
        typer.Option("--text-file", help="a long UTF-8 text (default: CPython's reference manual)"),
    ] = None,
    tokens: Annotated[int, typer.Option("--tokens", help="score the first N tokens of the text")] = 2048,
    window: Annotated[
        str, typer.Option("--window", help="keys per query of the sliding window (W; a list: 128,256)")
    ] = "256",
    sinks: Annotated[
        str, typer.Option("--sinks", help="sink tokens kept next to the window, e.g. 0,1,4 (0 = window only)")
    ] = "0,1,4",
    recompute: Annotated[
        int,
        typer.Option("--recompute", help="also the sliding window with re-computation on the last M tokens"),
    ] = 0,
    model: Annotated[
        str,
        typer.Option("--model", help="smollm2 (embedded SmolLM2-135M-Instruct), gemma3 (Gemma 3 270M), "
                                "a .gguf or folder"),
    ] = "smollm2",
    device: DeviceOpt = "cpu",
    png: Annotated[
        Path | None, typer.Option("--png", help="per-position NLL curves + sink profile (.png/.svg)")
    ] = None,
    smooth: Annotated[int, typer.Option("--smooth", help="--png: moving mean over this many tokens")] = 64,
    profile: Annotated[
        bool, typer.Option("--profile/--no-profile", help="measure the sink profile (one eager pass)")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    threads: ThreadsOpt = None,
) -> None:
    """Perplexity with full / window / window + sink attention (StreamingLLM, Xiao et al. 2023)."""
    names = {"tokens": "--tokens", "recompute": "--recompute", "window": "--window", "sinks": "--sinks",
             "text": "--text-file" if text_file is not None else "--tokens"}
    with user_errors(as_json, names):
        wins = split_ints("--window", window, 1)
        ks = split_ints("--sinks", sinks, 0)
        if max(ks) >= min(wins):
            raise ValueError(f"--sinks: expected each K < --window ({min(wins)}), got {sinks!r}")
        for name, val, lo in (("--tokens", tokens, 2), ("--recompute", recompute, 0),
                              ("--smooth", smooth, 1)):
            if val < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {val}")
        check_output(png, "--png", FIGURE)
        text = None if text_file is None else _read_text(text_file)
        from attnlab.inspect.llm.streaming import default_text, streaming_experiment, streaming_png

        lm = load_lm(model, threads=threads, device=device)
        ids = lm.tokenizer.piece_ids(default_text() if text is None else text)[:tokens]
        if len(ids) > lm.max_tokens:  # name the number asked for (the library sees only len(ids))
            raise ValueError(f"--tokens: expected at most {lm.max_tokens} (the model's context), "
                             f"got {tokens}")
        if len(ids) < max(wins) + 2:
            src = "--text-file" if text_file is not None else "--tokens"
            raise ValueError(f"{src}: expected at least window + 2 = {max(wins) + 2} tokens (some "
                             f"beyond the window), got {len(ids)}")
        res = streaming_experiment(lm, ids, tokens=None, windows=wins, sinks=ks,
                                   recompute=recompute, profile=profile)
        rep: dict[str, Any] = {"model": lm.name, "device": str(lm.device)} | res.to_dict()
        if png is not None:
            rep["png"] = str(streaming_png(res, parent_made(png), smooth=smooth))
    if as_json:
        print_json(rep)
        return
    _print(rep)


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def _print(rep: dict[str, Any]) -> None:
    m = rep["recompute"]
    start = " ".join(rep["text_start"].split())[:40]
    t = Table(title=f"{rep['model']}: {rep['n_tokens']} tokens ({start!r}...), backend {rep['backend']}",
              title_justify="left")
    cols = ["keys (max)", "ppl all", "ppl i >= W", *([f"ppl last {m}"] if m else []), "time (s)"]
    t.add_column("configuration", no_wrap=True)
    for c in cols:
        t.add_column(c, justify="right")
    for r in rep["rows"]:
        cells = [r["name"], f"{r['keys_mean']:.0f} ({r['keys_max']})", _f(r["ppl"]), _f(r["ppl_beyond"])]
        cells += [_f(r["ppl_last"])] if m else []
        t.add_row(*cells, f"{r['seconds']:.2f}")
    console.print(t, markup=False)
    console.print(f"[dim]keys: mean keys per query; ppl i >= W: queries past the window (W = "
                  f"{max(rep['windows'])} for full attention), where token 0 has left it[/]",
                  highlight=False)
    sp = rep["sink_profile"]
    if sp["first_token"]:
        vals = sp["first_token"]
        bars = "".join(SPARK[min(len(SPARK) - 1, int(v * len(SPARK)))] for v in vals)
        console.print(f"sink profile: share of attention on token 0 per layer (full attention, "
                      f"{sp['tokens']} tokens, {sp['seconds']:.1f} s)", highlight=False)
        console.print(f"  layers 0-{len(vals) - 1}: {bars}  mean {sum(vals) / len(vals):.2f}, "
                      f"max {max(vals):.2f} (layer {vals.index(max(vals))})", highlight=False)
        for i in range(0, len(vals), 10):
            console.print(f"  {i:>2}: " + " ".join(f"{v:.2f}" for v in vals[i: i + 10]), highlight=False)
        k = next(key for key in sp if key.startswith("first_") and key != "first_token")
        if k != "first_1":
            fk = sp[k]
            console.print(f"  on the {k.replace('_', ' ')} tokens: mean {sum(fk) / len(fk):.2f}",
                          highlight=False)
    if "png" in rep:
        console.print(f"wrote {rep['png']}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("streaming")(streaming_command)
