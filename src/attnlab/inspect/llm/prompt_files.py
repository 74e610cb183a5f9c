"""The prompt experiment's files: result.md, result.json and its pictures written into a folder
atomically, and a saved result.json read back into a report (``--report``: no model run).

Every file is written first in a temporary folder beside the target and renamed into place, so
a failed or interrupted run leaves the folder as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from attnlab.inspect.llm.prompt_experiment import ExperimentResult
from attnlab.inspect.llm.prompt_report import PromptReport, build_report

OUTPUTS = ("result.md", "result.json", "effects.png", "tokens.png", "heads.png")


def write_outputs(out: Path, report: PromptReport, png: bool = True) -> list[str]:
    """result.md, result.json, effects.png, tokens.png and (with a head sweep) heads.png into
    ``out``: all written first in a temporary folder beside it, so a failure leaves ``out`` as it
    was; other files in ``out`` are kept. Returns the paths written."""
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


def load_report(path: Path, name: str = "--report") -> PromptReport:
    """The report of an earlier run's result.json, rebuilt by today's code (``name``: the option
    that gave the path, for the messages)."""
    what = "a result.json of attnlab prompt-experiment"
    if not path.is_file():
        raise ValueError(f"{name}: expected {what}, got {str(path)!r} (no such file)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{name}: expected {what}, got {str(path)!r}, which is not JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("result"), dict):
        raise ValueError(f"{name}: expected {what} (with its \"result\"), got {str(path)!r}")
    return build_report(ExperimentResult.from_dict(data["result"], source=f"{name} {path}"))
