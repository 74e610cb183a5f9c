"""``attnlab train | translate | evaluate | experiment bottleneck``: seq2seq with attention."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from attnlab.cli.common import console, err_console, print_json, user_errors

JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="override a config key, e.g. --set train.lr=0.001 (repeatable)")]


def _log(message: str) -> None:
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)


def train_cmd(
    config: Annotated[Path | None, typer.Argument(help="a .json/.toml config file")] = None,
    # `...` is typer's "required" marker; out cannot drop its default (it follows config, which has one)
    out: Annotated[Path, typer.Option("--out", help="the run folder (the model goes here)")] = ...,  # type: ignore[assignment]
    preset_name: Annotated[str | None, typer.Option(
        "--preset", help="numbers (default), numbers-de, dates, bottleneck, tiny")] = None,
    overrides: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a seq2seq translator with attention; checkpoints let --resume continue it."""
    from attnlab.training.config import apply_overrides, load_config, preset
    from attnlab.training.loop import train
    from attnlab.training.run import RESUMABLE, read_run_config

    with user_errors(as_json):
        if config is not None and preset_name is not None:
            raise ValueError("CONFIG / --preset: expected one of them, got both")
        sets = list(overrides or [])
        if resume and config is None and preset_name is None:
            if not (out / "run.json").is_file():
                raise FileNotFoundError(
                    f"--resume: {out} holds no run (run.json missing); nothing was saved yet, "
                    f"so start it again with its CONFIG or --preset")
            cfg = read_run_config(out)  # the saved run; --set may change RESUMABLE keys only
            bad = [s for s in sets if s.split("=", 1)[0].strip() not in RESUMABLE]
            if bad:
                raise ValueError(f"--set: a resumed run keeps its model and data; only "
                                 f"{', '.join(RESUMABLE)} may change, got {bad}")
        else:
            cfg = load_config(config) if config is not None else preset(preset_name or "numbers")
        cfg = apply_overrides(cfg, sets)
        if as_json:
            cfg = apply_overrides(cfg, ["train.progress=false"])
        try:
            result = train(cfg, out, resume=resume, log=None if as_json else _log)
        except KeyboardInterrupt:
            err_console.print(f"interrupted; continue from the last checkpoint with: attnlab train "
                       f"--resume --out {out}", markup=False, soft_wrap=True)
            raise typer.Exit(code=130) from None
    r = result.results
    if as_json:
        print_json({"out": str(out), **{k: v for k, v in r.items() if k != "config"}})
        return
    console.print(f"model: {out}")
    console.print(f"test BLEU {r['test']['bleu']}  chrF {r['test']['chrf']}  "
               f"exact {r['test']['exact']:.3f}  (n = {r['test']['n']})")
    console.print(f"{r['steps']} steps, {r['train_seconds']:.0f} s training, "
               f"{r['tokens_per_second']:.0f} target tokens/s; stopped: {r['stopped']}")


def translate_cmd(
    text: Annotated[str, typer.Argument(help="the sentence to translate")],
    model: Annotated[Path, typer.Option("--model", help="a folder written by attnlab train")],
    beam: Annotated[int, typer.Option("--beam", help="beam size; 1 = greedy")] = 1,
    alpha: Annotated[float, typer.Option("--alpha", help="length normalisation exponent")] = 1.0,
    png: Annotated[Path | None, typer.Option("--png", help="write the alignment as PNG")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="write an interactive page")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Translate TEXT and show which source words each target word attended to."""
    from attnlab.training.translator import Translator

    with user_errors(as_json):
        if beam < 1:
            raise ValueError(f"--beam: expected >= 1, got {beam}")
        tr = Translator.load(model)
        t = tr.translate(text, beam=beam, alpha=alpha)
        if (png or html) and t.weights is None:
            raise ValueError("--png/--html: this model has no attention (model.attention = "
                             "none), so there is no alignment to draw")
        if png:
            _alignment_png(t, png, tr.model.cfg.attention)
        if html:
            _alignment_html(t, html, tr.model.cfg.attention)
    if as_json:
        print_json(t.to_dict())
        return
    console.print(t.text, markup=False, highlight=False)
    if t.unknown:
        err_console.print(f"note: unknown source tokens read as <unk>: {t.unknown}", markup=False,
                   soft_wrap=True)
    if not t.finished:
        err_console.print("note: stopped at the length limit before </s>", markup=False)
    if t.weights is None:
        err_console.print("(attention none: no alignment to show)")
        return
    from attnlab.viz import terminal_heatmap

    console.print(terminal_heatmap(t.weights, q_tokens=t.target_labels, k_tokens=t.source_tokens,
                                title=f"alignment ({tr.model.cfg.attention})"))


def _alignment_png(t: Any, path: Path, attention: str) -> None:
    from attnlab.viz import alignment_plot

    alignment_plot(t.weights, t.source_tokens, t.target_labels, show_argmax=True,
                   title=f"{attention}: {t.text}", path=path)


def _alignment_html(t: Any, path: Path, attention: str) -> None:
    from attnlab.viz import head_view_html

    head_view_html(t.weights, q_tokens=t.target_labels, k_tokens=t.source_tokens,
                   title=f"Alignment ({attention}): {t.source} -> {t.text}",
                   metadata={"attention": attention, "source": t.source,
                             "translation": t.text}, path=path)


def evaluate_cmd(
    model: Annotated[Path, typer.Option("--model", help="a folder written by attnlab train")],
    split: Annotated[str, typer.Option("--split", help="train, valid, test or a TSV file")
                     ] = "test",
    beam: Annotated[int, typer.Option("--beam", help="beam size; 1 = greedy")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """BLEU, chrF and exact match on a split, overall and by source length."""
    from attnlab.training.translator import Translator

    with user_errors(as_json):
        if beam < 1:
            raise ValueError(f"--beam: expected >= 1, got {beam}")
        res = Translator.load(model).evaluate(split, beam=beam)
    if as_json:
        print_json({"split": split, "beam": beam, **res.metrics, "by_length": res.buckets})
        return
    m = res.metrics
    console.print(f"{split}: BLEU {m['bleu']}  chrF {m['chrf']}  exact {m['exact']}  (n = {m['n']})")
    for b in res.buckets:
        if b["n"]:
            console.print(f"  length {b['bucket']:>7}: BLEU {b['bleu']:6.2f}  (n = {b['n']})")


def bottleneck_cmd(
    out: Annotated[Path, typer.Option("--out", help="experiment folder")] = Path(
        "runs/bottleneck"),
    quick: Annotated[bool, typer.Option("--quick", help="tiny sizes: a smoke run")] = False,
    jobs: Annotated[int, typer.Option("--jobs", help="models trained in parallel")] = 2,
    overrides: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train none / bahdanau / luong-general / luong-local-p alike; plot BLEU vs length."""
    from attnlab.training.experiment import run_bottleneck

    with user_errors(as_json):
        res = run_bottleneck(out, quick=quick, overrides=list(overrides or []), jobs=jobs,
                             log=None if as_json else _log)
    if as_json:
        print_json({"out": str(out), "rows": res.rows, "summary": res.summary,
                     "seconds": round(res.seconds, 1)})
        return
    console.print((out / "table.md").read_text(encoding="utf-8"), markup=False, soft_wrap=True)
    console.print(f"wrote {out / 'bleu_vs_length.png'}, table.csv, table.md, settings.json",
               soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("translate")(translate_cmd)
    app.command("evaluate")(evaluate_cmd)
    experiment = typer.Typer(help="Experiments that reproduce results from the papers.",
                             no_args_is_help=True)
    experiment.command("bottleneck")(bottleneck_cmd)
    app.add_typer(experiment, name="experiment")
