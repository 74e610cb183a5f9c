"""``attnlab experiment architectures | heads | ablations``: Transformer vs RNNs; heads; Table 3."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnlab.cli.common import (
    ThreadsOpt,
    check_output,
    console,
    log,
    print_json,
    use_threads,
    user_errors,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="override a config key for every model, e.g. --set train.seed=2 "
                  "(a model.* key applies to the models that have it; repeatable)")]
QuickOpt = Annotated[bool, typer.Option("--quick", help="tiny sizes: a smoke run in seconds")]


NAMES = {"threads": "--threads"}  # the library's names -> the options the user typed


def architectures_cmd(
    out: Annotated[Path, typer.Option("--out", help="experiment folder")] = Path(
        "runs/architectures"),
    quick: QuickOpt = False,
    threads: ThreadsOpt = None,
    overrides: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Transformer vs Bahdanau vs Luong (general): BLEU, BLEU by length, tokens/s, steps to 90."""
    with user_errors(as_json, NAMES):
        check_output(out, "--out")
        from attnlab.training.experiments.architectures import run_architectures

        res = run_architectures(out, quick=quick, overrides=list(overrides or []),
                                threads=use_threads(threads), log=None if as_json else log)
    if as_json:
        print_json({"out": str(out), "summary": res.summary, "rows": res.rows,
                    "throughput_ratio_transformer_vs_bahdanau": res.throughput_ratio,
                    "seconds": round(res.seconds, 1)})
        return
    console.print((out / "table.md").read_text(encoding="utf-8"), markup=False, soft_wrap=True)
    console.print(f"wrote {out / 'results.json'}, table.md, bleu_vs_length.png", soft_wrap=True)


def heads_cmd(
    out: Annotated[Path, typer.Option("--out", help="experiment folder")] = Path("runs/heads"),
    model: Annotated[Path | None, typer.Option(
        "--model", help="a finished Transformer run folder (default: train one into OUT/model)")
    ] = None,
    sentences: Annotated[int, typer.Option(
        "--sentences", help="test sentences each ablated model translates")] = 300,
    quick: QuickOpt = False,
    threads: ThreadsOpt = None,
    overrides: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ablate every head of a Transformer translator (BLEU drop), rank heads by importance
    (Michel et al. 2019) and prune them: BLEU against heads kept."""
    with user_errors(as_json, NAMES):
        check_output(out, "--out")
        if model is not None and (quick or overrides):
            raise ValueError("--model: a given run is not retrained; drop --quick / --set")
        from attnlab.training.experiments.heads import run_heads

        res = run_heads(out, model_dir=model, quick=quick, overrides=list(overrides or []),
                        sentences=sentences, threads=use_threads(threads), log=None if as_json else log)
    if as_json:
        print_json({"out": str(out), "baseline_bleu": res.baseline_bleu,
                    "ablation": res.ablation, "pruning": res.pruning,
                    "seconds": round(res.seconds, 1)})
        return
    console.print((out / "table.md").read_text(encoding="utf-8"), markup=False, soft_wrap=True)
    console.print(f"wrote {out / 'results.json'}, table.md, heads_*.png, pruning.png",
                  soft_wrap=True)


def ablations_cmd(
    out: Annotated[Path, typer.Option("--out", help="experiment folder")] = Path(
        "runs/ablations"),
    quick: QuickOpt = False,
    threads: ThreadsOpt = None,
    overrides: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Vaswani et al. Table 3 in small: heads 1/2/4/8 at a fixed d_model, and positions
    sinusoidal/learned/rotary/none, each a Transformer translator on the numbers corpus."""
    with user_errors(as_json, NAMES):
        check_output(out, "--out")
        from attnlab.training.experiments.ablations import run_ablations

        res = run_ablations(out, quick=quick, overrides=list(overrides or []),
                            threads=use_threads(threads), log=None if as_json else log)
    if as_json:
        print_json({"out": str(out), "summary": res.summary, "rows": res.rows,
                    "seconds": round(res.seconds, 1)})
        return
    console.print((out / "table.md").read_text(encoding="utf-8"), markup=False, soft_wrap=True)
    console.print(f"wrote {out / 'results.json'}, table.md, ablations.png", soft_wrap=True)
