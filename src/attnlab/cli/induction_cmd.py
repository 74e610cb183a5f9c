"""``attnlab experiment induction``: one- vs two-layer attention-only models, induction heads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnlab.cli.common import console, print_json, user_errors


def induction_cmd(
    out: Annotated[Path, typer.Option("--out", help="experiment folder")] = Path("runs/induction"),
    steps: Annotated[int, typer.Option("--steps", help="training steps per model")] = 2500,
    seed: Annotated[int, typer.Option("--seed", help="seed of data and initialisation")] = 0,
    quick: Annotated[bool, typer.Option("--quick", help="a smoke run in seconds")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Train 1- and 2-layer attention-only models on repeated random blocks; watch induction
    heads form (accuracy on the repeat, induction score per head, over training)."""
    with user_errors(as_json):
        from attnlab.data.io import atomic_write_bytes, atomic_write_text, write_json
        from attnlab.training.induction import InductionConfig, markdown, plot_png, run_induction

        if steps < 1:
            raise ValueError(f"--steps: expected a positive int, got {steps}")
        cfg = InductionConfig(steps=40 if quick else steps, eval_every=20 if quick else 100, seed=seed)
        res = run_induction(cfg, progress=not as_json, log=None if as_json else console.print)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "results.json", res)
        atomic_write_text(out / "results.md", markdown(res))
        atomic_write_bytes(out / "induction.png", plot_png(res))
    if as_json:
        print_json({"out": str(out), "summary": res["summary"]})
        return
    console.print(markdown(res), markup=False, soft_wrap=True)
    console.print(f"wrote {out / 'induction.png'}, results.json, results.md", soft_wrap=True)
