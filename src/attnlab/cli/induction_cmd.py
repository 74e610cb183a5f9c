"""``attnlab experiment induction``: one- vs two-layer attention-only models, induction heads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from attnlab.cli.common import (
    ThreadsOpt,
    check_output,
    console,
    print_json,
    split_tokens,
    use_threads,
    user_errors,
)


def _seeds(text: str) -> list[int]:
    parts = split_tokens(text) or []
    if not parts or not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"--seeds: expected distinct integers >= 0, comma- and/or space-separated "
                         f"(e.g. 0,1,2), got {text!r}")
    return [int(p) for p in parts]


def induction_cmd(
    out: Annotated[Path, typer.Option("--out", help="experiment folder")] = Path("runs/induction"),
    steps: Annotated[int, typer.Option("--steps", help="training steps per model")] = 2500,
    seed: Annotated[int | None, typer.Option(
        "--seed", help="seed of data and initialisation (default 0)")] = None,
    seeds: Annotated[str | None, typer.Option(
        "--seeds", help="run the experiment once per seed (e.g. 0,1,2) into OUT/seed-N, and "
                        "tabulate how often the phase change comes (seeds.md, seeds.json)")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="a smoke run in seconds")] = False,
    threads: ThreadsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Train 1- and 2-layer attention-only models on repeated random blocks; watch induction
    heads form (accuracy on the repeat, induction score per head, over training)."""
    with user_errors(as_json):
        check_output(out, "--out")
        n_threads = use_threads(threads)
        from attnlab.data.io import atomic_write_bytes, atomic_write_text, write_json
        from attnlab.training.experiments.induction import (
            InductionConfig,
            markdown,
            plot_png,
            run_induction,
            seeds_markdown,
        )

        if steps < 1:
            raise ValueError(f"--steps: expected a positive int, got {steps}")
        if seeds is not None and seed is not None:
            raise ValueError("--seeds: expected --seed or --seeds, got both")
        chosen = _seeds(seeds) if seeds is not None else [0 if seed is None else seed]
        runs: dict[int, dict[str, Any]] = {}
        for s in chosen:
            cfg = InductionConfig(steps=40 if quick else steps, eval_every=20 if quick else 100, seed=s,
                                 threads=n_threads)
            res = run_induction(cfg, progress=not as_json, log=None if as_json else console.print)
            folder = out if seeds is None else out / f"seed-{s}"
            folder.mkdir(parents=True, exist_ok=True)
            write_json(folder / "results.json", res)
            atomic_write_text(folder / "results.md", markdown(res))
            atomic_write_bytes(folder / "induction.png", plot_png(res))
            runs[s] = res
        if seeds is not None:
            table = {str(s): r["summary"] for s, r in runs.items()}
            write_json(out / "seeds.json", table)
            atomic_write_text(out / "seeds.md", seeds_markdown(runs))
    if as_json:
        if seeds is None:
            print_json({"out": str(out), "summary": runs[chosen[0]]["summary"]})
        else:
            print_json({"out": str(out), "seeds": {str(s): r["summary"] for s, r in runs.items()}})
        return
    if seeds is None:
        console.print(markdown(runs[chosen[0]]), markup=False, soft_wrap=True)
        console.print(f"wrote {out / 'induction.png'}, results.json, results.md", soft_wrap=True)
        return
    console.print(seeds_markdown(runs), markup=False, soft_wrap=True)
    console.print(f"wrote {out / 'seeds.md'}, seeds.json and seed-N/ (results.json, results.md, "
                  f"induction.png) for seeds {', '.join(map(str, chosen))}", soft_wrap=True)
