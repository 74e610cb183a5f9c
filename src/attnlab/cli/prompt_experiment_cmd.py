"""``attnlab prompt-experiment``: do words added to a prompt steer the answer, over many tasks,
with controls, sampled and fixed answers, interventions and intervals (issue 21).

Parses and checks everything before torch loads; ``--out``'s files are written in a temporary
folder beside it and renamed into place, so a failed or interrupted run leaves nothing
half-written. ``--report result.json`` re-renders an earlier run without running the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from attnlab.cli.common import (
    DeviceOpt,
    ThreadsOpt,
    check_output,
    console,
    err_console,
    load_lm,
    print_json,
    user_errors,
)

if TYPE_CHECKING:
    from attnlab.inspect.llm.prompt_report import PromptReport

NAMES = {"samples": "--samples", "seed": "--seed", "temperature": "--temperature", "flow": "--flow",
         "max_new_tokens": "--max-new-tokens", "tasks": "--tasks", "threads": "--threads",
         "path": "--prompts", "fixed": "--fixed-answer", "n_boot": "--n-boot"}
CODE_TOKENS = 192  # --generate-code: step 1's answer length


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
    device: DeviceOpt = "cpu",
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
            from attnlab.inspect.llm.prompt_files import load_report

            report = load_report(report_file)
            _finish(report, report.write(out) if out is not None else [], as_json, None)
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
        lm = load_lm(model, threads=threads, device=device)
        from attnlab.inspect.llm.prompt_experiment import run_experiment
        from attnlab.inspect.llm.prompt_report import build_report

        res = run_experiment(lm, ps, cfg, progress=_progress(as_json), code_source=source,
                             generate_code_tokens=CODE_TOKENS if generate_code else 0)
        report = build_report(res)
        files = report.write(out) if out is not None else []
    _finish(report, files, as_json, str(lm.device))


def _finish(report: PromptReport, files: list[str], as_json: bool, device: str | None) -> None:
    """``device``: where the model ran (None: a report re-rendered from its file, no model run)."""
    if as_json:
        print_json(report.to_dict() | ({"device": device} if device else {}) | {"files": files})
        return
    from attnlab.viz.tables import print_blocks

    print_blocks(console, [*report.blocks(), *(f"wrote {f}" for f in files)], title=report.title)


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
