"""What the training experiments share: one model trained (or resumed) per run folder, the
threads they train with, settings never mixed in one folder, the columns two runs must agree
on, and BLEU by source length drawn once.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnlab.arguments import expect_nonneg_int
from attnlab.data.io import read_json
from attnlab.training.loop import train
from attnlab.training.run import RESUMABLE, config_differences, read_run_config
from attnlab.training.run_config import RunConfig

CLOCK: tuple[str, ...] = ("train_seconds", "tokens_per_second", "threads")  # machine-dependent columns


def experiment_threads(threads: int) -> int:
    """The torch threads an experiment trains with: ``threads``, or 0 = min(cores, 2) (these
    models are small; more threads mostly wait on each other)."""
    return expect_nonneg_int("threads", threads) or min(os.cpu_count() or 1, 2)


def train_one(cfg_dict: dict[str, Any], folder: str, threads: int) -> dict[str, Any]:
    """Train (or resume) one model in ``folder`` and return its results.json; a folder that
    already holds results.json is not retrained. Picklable: the process pools call it."""
    if (Path(folder) / "results.json").is_file():
        return read_json(Path(folder) / "results.json")
    from attnlab.threads import apply_threads

    apply_threads(threads)
    cfg = RunConfig.from_dict(cfg_dict, "experiment")
    return train(cfg, folder, resume=True).results


def refuse_other_runs(out: Path, cfgs: dict[str, RunConfig]) -> None:
    """Never mix results of different settings in one folder: a run folder ``out/name`` that
    exists must hold ``cfgs[name]`` (keys a resume may change aside)."""
    for name, cfg in cfgs.items():
        if (out / name / "run.json").is_file():
            diff = [k for k in config_differences(read_run_config(out / name), cfg)
                    if k not in RESUMABLE]
            if diff:
                raise ValueError(f"--out: {out / name} holds a run with other settings ({diff}); "
                                 f"choose another --out (nothing was changed)")


def parameter_count(folder: Path) -> int:
    from attnlab.models.translators import load_translator

    return sum(p.numel() for p in load_translator(folder).parameters())


def deterministic_view(summary: list[dict[str, Any]], clock: Sequence[str] = CLOCK) -> list[dict[str, Any]]:
    """The columns that depend on the seed only (``clock`` columns dropped): what two runs of
    one experiment with one seed must share."""
    return [{k: v for k, v in s.items() if k not in clock} for s in summary]


def plot_png(rows: list[dict[str, Any]]) -> bytes:
    """BLEU against source length, one line per model (the shape of Bahdanau Fig. 2)."""
    from matplotlib.figure import Figure  # Agg canvas; pyplot never touched

    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    ax = fig.add_subplot()
    buckets = list(dict.fromkeys(r["bucket"] for r in rows))
    for a in dict.fromkeys(r["attention"] for r in rows):
        pts = [(buckets.index(r["bucket"]), r["bleu"]) for r in rows if r["attention"] == a]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                linestyle="--" if a == "none" else "-", label=a)
    ax.set_xticks(range(len(buckets)), buckets)
    ax.set_xlabel("source length (tokens)")
    ax.set_ylabel("test BLEU")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title("BLEU vs source length: the fixed-vector bottleneck", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
