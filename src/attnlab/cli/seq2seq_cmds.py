"""``attnlab train | translate | evaluate | experiment bottleneck``: seq2seq with attention."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from attnlab.cli.common import (
    FIGURE,
    PAGE,
    ThreadsOpt,
    check_output,
    console,
    err_console,
    log,
    parent_made,
    print_json,
    use_threads,
    user_errors,
)
from attnlab.cli.induction_cmd import induction_cmd

JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="override a config key, e.g. --set train.lr=0.001 (repeatable)")]

# Library parameter names -> the options a user typed (errors name what the user can change).
TRAIN_NAMES = {"preset": "--preset", "out": "--out", "arch": "--arch", "config": "CONFIG"}
TRANSLATE_NAMES = {"text": "TEXT", "model": "--model", "beam": "--beam", "alpha": "--alpha",
                   "file": "--file", "png": "--png", "html": "--html", "heads": "--heads"}
EVALUATE_NAMES = {"model": "--model", "split": "--split", "beam": "--beam"}


def train_cmd(
    config: Annotated[Path | None, typer.Argument(help="a .json/.toml config file")] = None,
    # `...` is typer's "required" marker; out cannot drop its default (it follows config, which has one)
    out: Annotated[Path, typer.Option("--out", help="the run folder (the model goes here)")] = ...,  # type: ignore[assignment]
    preset_name: Annotated[str | None, typer.Option(
        "--preset", help="numbers (default), numbers-de, dates, bottleneck, tiny, "
                         "transformer-numbers, transformer-tiny")] = None,
    arch: Annotated[str | None, typer.Option(
        "--arch", help="rnn or transformer: the same as --set model.arch=ARCH (applied first)")] = None,
    overrides: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out")] = False,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a translator (RNN with attention, or a Transformer); --resume continues it."""
    from attnlab.training.loop import train
    from attnlab.training.run import RESUMABLE, read_run_config
    from attnlab.training.run_config import apply_overrides, load_config, preset

    with user_errors(as_json, TRAIN_NAMES):
        check_output(out, "--out")
        use_threads(threads)  # a config's train.threads, when set, still decides (bitwise resume)
        if config is not None and preset_name is not None:
            raise ValueError("CONFIG / --preset: expected one of them, got both")
        sets = list(overrides or [])
        if arch is not None:
            sets.insert(0, f"model.arch={arch}")
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
            cfg = apply_overrides(cfg, sets)
        elif config is not None:  # file + --set, validated once: a file may leave data.path to --set
            cfg = load_config(config, sets)
        else:
            cfg = apply_overrides(preset(preset_name or "numbers"), sets)
        if as_json:
            cfg = apply_overrides(cfg, ["train.progress=false"])
        try:
            result = train(cfg, out, resume=resume, log=None if as_json else log)
        except KeyboardInterrupt:
            err_console.print(f"interrupted; continue from the last checkpoint with: attnlab train "
                       f"--resume --out {out}", markup=False, soft_wrap=True)
            raise typer.Exit(code=130) from None
    r = result.results
    if int(os.environ.get("RANK", "0")) > 0:
        return  # under torchrun, rank 0 reports for the job (the others trained in step with it)
    if as_json:
        print_json({"out": str(out), **{k: v for k, v in r.items() if k != "config"}})
        return
    console.print(f"model: {out}")
    console.print(f"test BLEU {r['test']['bleu']}  chrF {r['test']['chrf']}  "
               f"exact {r['test']['exact']:.3f}  (n = {r['test']['n']})")
    console.print(f"{r['steps']} steps, {r['train_seconds']:.0f} s training, "
               f"{r['tokens_per_second']:.0f} target tokens/s; stopped: {r['stopped']}")


def translate_cmd(
    text: Annotated[str | None, typer.Argument(help="the sentence to translate")] = None,
    # `...`: required (it follows text, which has a default)
    model: Annotated[Path, typer.Option("--model", help="a folder written by attnlab train")
                     ] = ...,  # type: ignore[assignment]
    file: Annotated[str | None, typer.Option(
        "--file", help="translate every line of this file ('-' = stdin), one translation a line "
                       "(blank lines stay blank)")] = None,
    beam: Annotated[int, typer.Option("--beam", help="beam size; 1 = greedy")] = 1,
    alpha: Annotated[float, typer.Option("--alpha", help="length normalisation exponent")] = 1.0,
    png: Annotated[Path | None, typer.Option("--png", help="write the alignment as PNG")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="write an interactive page")] = None,
    heads: Annotated[Path | None, typer.Option(
        "--heads", help="Transformer: draw every layer x head of encoder self-, decoder self- and "
                        "cross-attention into this folder (PNG grids + HTML pages)")] = None,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Translate TEXT and show which source words each target word attended to; or translate
    every line of --file."""
    from attnlab.training.translator import Translator

    with user_errors(as_json, TRANSLATE_NAMES):
        use_threads(threads)
        if beam < 1:
            raise ValueError(f"--beam: expected >= 1, got {beam}")
        check_output(png, "--png", FIGURE)
        check_output(html, "--html", PAGE)
        check_output(heads, "--heads")
        if (text is None) == (file is None):
            raise ValueError(f"TEXT / --file: expected a sentence or --file FILE, got "
                             f"{'both' if file is not None else 'neither'}")
        if file is not None:
            drawn = [o for o, v in (("--png", png), ("--html", html), ("--heads", heads)) if v]
            if drawn:
                raise ValueError(f"{'/'.join(drawn)}: draws one sentence's attention; expected "
                                 f"TEXT, got --file (translate that line alone to draw it)")
            _translate_file(model, file, beam, alpha, as_json)
            return
        assert text is not None
        tr = Translator.load(model)
        t = tr.translate(text, beam=beam, alpha=alpha, attention=heads is not None)
        if (png or html) and t.weights is None:
            raise ValueError("--png/--html: this model has no attention (model.attention = "
                             "none), so there is no alignment to draw")
        for path in (png, html):
            if path:
                parent_made(path)  # checked above, made once needed
        if png:
            _alignment_png(t, png, tr.alignment_name)
        if html:
            _alignment_html(t, html, tr.alignment_name)
        if heads is not None and t.maps is not None:
            from attnlab.training.pictures import attention_pictures

            written = attention_pictures(t.maps, heads, title=f"{t.source} -> {t.text}", html=True)
            if not as_json:
                err_console.print(f"wrote {', '.join(str(w) for w in written)}", markup=False,
                                  soft_wrap=True)
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
                                title=f"alignment ({tr.alignment_name})"))


def _translate_file(model: Path, file: str, beam: int, alpha: float, as_json: bool) -> None:
    """One translation per input line, in order, on stdout; notes (unknown words, outputs cut
    at the length limit) summarised on stderr."""
    from attnlab.data.aligned import read_lines
    from attnlab.training.translator import Translator

    lines = read_lines(file, "--file", keep_trailing=True)  # input errors before the model loads
    results = Translator.load(model).translate_many(lines, beam=beam, alpha=alpha)
    if as_json:
        print_json([{"line": i, **t.to_dict()} if t is not None else
                    {"line": i, "source": line, "translation": "", "blank": True}
                    for i, (line, t) in enumerate(zip(lines, results, strict=True), start=1)])
        return
    sys.stdout.write("".join(("" if t is None else t.text) + "\n" for t in results))
    sys.stdout.flush()
    unknown = [(i, t.unknown) for i, t in enumerate(results, start=1) if t and t.unknown]
    cut = [i for i, t in enumerate(results, start=1) if t and not t.finished]
    if unknown:
        shown = "; ".join(f"line {i}: {u}" for i, u in unknown[:5])
        more = f"; and {len(unknown) - 5} more lines" if len(unknown) > 5 else ""
        log(f"note: unknown source tokens read as <unk> on {len(unknown)} of {len(lines)} "
             f"lines: {shown}{more}")
    if cut:
        log(f"note: stopped at the length limit before </s> on {len(cut)} lines: "
             f"{', '.join(map(str, cut[:20]))}{' ...' if len(cut) > 20 else ''}")


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
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """BLEU, chrF and exact match on a split, overall and by source length."""
    from attnlab.training.translator import Translator

    with user_errors(as_json, EVALUATE_NAMES):
        use_threads(threads)
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
    threads: Annotated[int | None, typer.Option(
        "--threads", help="torch threads in all, shared out to the --jobs (default: the cores this "
                          "process may use)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train none / bahdanau / luong-general / luong-local-p alike; plot BLEU vs length."""
    from attnlab.training.experiments.bottleneck import run_bottleneck

    with user_errors(as_json):
        sets = list(overrides or [])
        if threads is not None:  # else each job gets cores // jobs (run_bottleneck)
            sets.append(f"train.threads={use_threads(threads)}")
        res = run_bottleneck(out, quick=quick, overrides=sets, jobs=jobs,
                             log=None if as_json else log)
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
    from attnlab.cli.translator_experiments_cmd import architectures_cmd, heads_cmd  # light: typer only

    experiment.command("architectures")(architectures_cmd)
    experiment.command("heads")(heads_cmd)
    from attnlab.cli.translator_experiments_cmd import ablations_cmd  # light: typer only

    experiment.command("ablations")(ablations_cmd)
    experiment.command("induction")(induction_cmd)
    app.add_typer(experiment, name="experiment")
