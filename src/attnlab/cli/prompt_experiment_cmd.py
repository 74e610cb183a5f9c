"""``attnlab prompt-experiment``: do words added to a prompt steer the answer, over many tasks,
with controls, sampled and fixed answers, interventions and intervals (issue 21).

Parses and checks everything before torch loads; ``--out``'s files are written in a temporary
folder beside it and renamed into place, so a failed or interrupted run leaves nothing
half-written. ``--report result.json`` re-renders an earlier run without running the model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from attnlab.cli.common import (
    ThreadsOpt,
    check_output,
    console,
    err_console,
    load_lm,
    print_json,
    user_errors,
)

NAMES = {"samples": "--samples", "seed": "--seed", "temperature": "--temperature", "flow": "--flow",
         "max_new_tokens": "--max-new-tokens", "tasks": "--tasks", "threads": "--threads",
         "path": "--prompts", "fixed": "--fixed-answer", "n_boot": "--n-boot"}
CODE_TOKENS = 192  # --generate-code: step 1's answer length


OUTPUTS = ("result.md", "result.json", "effects.png", "tokens.png", "heads.png")


def _move_in(tmp: Path, out: Path, names: list[str]) -> None:
    """Each finished file of ``tmp`` renamed into ``out`` (one atomic rename per file), then the
    outputs of an earlier run that this one did not write removed (a stale heads.png would read
    as this run's); nothing else in ``out`` is touched."""
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        os.replace(tmp / name, out / name)
    for name in OUTPUTS:
        if name not in names:
            (out / name).unlink(missing_ok=True)


def write_outputs(out: Path, report: Any, png: bool = True) -> list[str]:
    """result.md, result.json, effects.png, tokens.png and (with a head sweep) heads.png into
    ``out``: all written first in a temporary folder beside it, so a failure leaves ``out`` as it
    was; other files in ``out`` are kept."""
    import json

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "result.md").write_text(report.markdown(), encoding="utf-8")
        (tmp / "result.json").write_text(json.dumps(report.to_dict(), indent=1, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
        names = ["result.md", "result.json"]
        from attnlab.viz.effects import EffectPanel, effects_figure

        for name, panels in (("effects.png", report.panels), ("tokens.png", report.token_panels)):
            if png and panels:
                effects_figure([EffectPanel(**p) for p in panels], tmp / name)
                names.append(name)
        if png and report.sweep:
            _sweep_png(report.sweep, tmp / "heads.png")
            names.append("heads.png")
        _move_in(tmp, out, names)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [str(out / n) for n in names]


def _sweep_png(grid: list[list[float]], path: Path) -> None:
    from attnlab.viz import heatmap, save_figure

    lim = max(abs(v) for row in grid for v in row) or 1.0
    fig = heatmap(grid, q_tokens=[f"L{i}" for i in range(len(grid))],
                  k_tokens=[f"H{j}" for j in range(len(grid[0]))], cmap="RdBu", vmin=-lim, vmax=lim,
                  show_values=False, value_label="change in the logit difference (mean over tasks)",
                  title="the added words knocked out of one head at a time")
    ax = fig.axes[0]
    ax.set_xlabel("head")  # the heatmap's own axis names (query, key) mean nothing here
    ax.set_ylabel("layer")
    save_figure(fig, path)


def _print(report: Any) -> None:
    from rich.table import Table as RichTable

    console.print(report.title, style="bold", markup=False, highlight=False)
    for s in report.summary:
        console.print(f"- {s}", markup=False, highlight=False)
    for t in report.tables:
        rt = RichTable(title=t.title, title_justify="left", caption=t.note or None, caption_justify="left")
        for c in t.columns:
            rt.add_column(c, overflow="fold")
        for r in t.rows:
            rt.add_row(*r)
        console.print(rt, markup=False)


def prompt_experiment_command(
    flow: Annotated[str, typer.Option(help="review: a question about the code in a new conversation "
                                           "(the blog post's flow); append: a sentence added to the "
                                           "task")] = "review",
    prompts: Annotated[Path | None, typer.Option("--prompts", help="your own prompt set (.toml/.json, the "
                                                 "format of attnlab's coding_review.toml)")] = None,
    code: Annotated[Path | None, typer.Option("--code", help="review this code file alone (its samples are "
                                              "then the units of the statistics)")] = None,
    generate_code: Annotated[bool, typer.Option("--generate-code", help="step 1: each task's prompt "
                                                "generates the code reviewed (default: the shipped "
                                                "code)")] = False,
    samples: Annotated[int | None, typer.Option(help="seeded samples per condition (default 4; "
                                                "--quick 2)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the samples, random knockouts and bootstrap")] = 0,
    temperature: Annotated[float, typer.Option(help="sampling temperature")] = 0.8,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", help="answer length (default "
                                                       "24; --quick 16)")] = None,
    tasks: Annotated[int | None, typer.Option(help="only the first N tasks (default all; --quick 6)")] = None,
    threads: ThreadsOpt = None,
    report_file: Annotated[Path | None, typer.Option("--report", help="re-render the result.json of an "
                                                    "earlier run (no model run; --out, --json)")] = None,
    head_sweep: Annotated[bool, typer.Option("--head-sweep", help="also knock the added words out of each "
                                             "head alone (layers x heads rows per task; heads.png)")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="6 tasks, 2 samples, topic/1 paraphrase/1 control, "
                                        "16 tokens: about a minute")] = False,
    fixed_answer: Annotated[str | None, typer.Option("--fixed-answer", help="the topic sentence scored "
                                                     "under every condition")] = None,
    neutral_answer: Annotated[str | None, typer.Option("--neutral-answer", help="the neutral sentence "
                                                       "beside it")] = None,
    model: Annotated[str, typer.Option("--model", help="smollm2 or a llama .gguf/folder")] = "smollm2",
    out: Annotated[Path | None, typer.Option(help="write result.md, result.json, effects.png here "
                                             "(atomically)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """The prompt experiment: many tasks, topic vs paraphrases vs controls, sampled and fixed
    answers, knockout with matched controls, the heads that write the topic — with intervals."""
    with user_errors(as_json, NAMES):
        from dataclasses import replace

        from attnlab.data.prompt_sets import Task, builtin_prompt_set, load_prompt_set
        from attnlab.inspect.llm.prompt_design import ExperimentConfig, FixedAnswers, read_code

        check_output(out, "--out")
        if report_file is not None:
            report = _rerender(report_file)
            files = write_outputs(out, report) if out is not None else []
            _finish(report, files, as_json)
            return
        if (fixed_answer is None) != (neutral_answer is None):
            raise ValueError("--fixed-answer: expected it together with --neutral-answer, got only one")
        if code is not None and (generate_code or flow != "review"):
            raise ValueError("--code: expected the review flow without --generate-code, got "
                             + ("--generate-code too" if generate_code else f"--flow {flow}"))
        kw: dict[str, Any] = {"flow": flow, "seed": seed, "temperature": temperature,
                              "head_sweep": head_sweep}
        for k, v in (("samples", samples), ("max_new_tokens", max_new_tokens), ("tasks", tasks)):
            if v is not None:
                kw[k] = v
        if fixed_answer is not None and neutral_answer is not None:
            kw["fixed"] = FixedAnswers(fixed_answer, neutral_answer)
        cfg = (ExperimentConfig.quick(**kw) if quick else ExperimentConfig(**kw)).check()
        ps = builtin_prompt_set() if prompts is None else load_prompt_set(prompts, option="--prompts")
        source = "shipped"
        if code is not None:
            text = read_code(code)
            first = ps.tasks[0]
            ps = replace(ps, tasks=(Task(id=code.stem or "code", task=first.task, code=text,
                                         language=code.suffix.lstrip(".") or "python"),))
            source = code.name
        lm = load_lm(model, threads=threads)
        from attnlab.inspect.llm.prompt_experiment import run_experiment
        from attnlab.inspect.llm.prompt_report import build_report

        res = run_experiment(lm, ps, cfg, progress=_progress(as_json), code_source=source,
                             generate_code_tokens=CODE_TOKENS if generate_code else 0)
        report = build_report(res)
        files = write_outputs(out, report) if out is not None else []
    _finish(report, files, as_json)


def _finish(report: Any, files: list[str], as_json: bool) -> None:
    if as_json:
        print_json(report.to_dict() | {"files": files})
        return
    _print(report)
    for f in files:
        console.print(f"wrote {f}", markup=False, highlight=False)


def _rerender(path: Path) -> Any:
    """The report of an earlier run's result.json (``--report``), rebuilt by today's code."""
    import json

    from attnlab.inspect.llm.prompt_experiment import ExperimentResult
    from attnlab.inspect.llm.prompt_report import build_report

    if not path.is_file():
        raise ValueError(f"--report: expected a result.json of attnlab prompt-experiment, got {str(path)!r} "
                         f"(no such file)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"--report: expected a result.json of attnlab prompt-experiment, got {str(path)!r}, "
                         f"which is not JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("result"), dict):
        raise ValueError(f"--report: expected a result.json of attnlab prompt-experiment (with its "
                         f"\"result\"), got {str(path)!r}")
    return build_report(ExperimentResult.from_dict(data["result"], source=f"--report {path}"))


def _progress(quiet: bool):
    """Progress on stderr (stdout stays clean for --json)."""
    if quiet:
        return None
    from rich.progress import Progress

    bar = Progress(console=err_console, transient=True)
    ids: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in ids:
            if not ids:
                bar.start()
            ids[stage] = bar.add_task(stage, total=total)
        bar.update(ids[stage], completed=done)
        if all(t.finished for t in bar.tasks) and stage == "tasks" and done == total:
            bar.stop()

    return update


def register(app: typer.Typer) -> None:
    app.command("prompt-experiment")(prompt_experiment_command)
