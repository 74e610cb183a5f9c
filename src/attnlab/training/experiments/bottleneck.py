"""The bottleneck experiment: does BLEU survive long inputs without attention?

Bahdanau et al. 2014 (Fig. 2) plotted BLEU against source length: the fixed-vector
encoder-decoder (RNNencdec) falls off as sentences grow, the attentional RNNsearch does not.
Here ``none``, ``bahdanau``, ``luong-general`` and ``luong-local-p`` train on the same data
with the same budget (preset ``bottleneck``: lists of 1-8 numbers, English words -> Spanish
words), and are scored on a test set with equally many sentences per source-length bucket.

Outputs in the experiment folder: ``bleu_vs_length.png``, ``table.csv``, ``table.md``,
``settings.json`` and one run folder per model (each a usable model). A model whose run
folder already holds ``results.json`` is not retrained; an interrupted one is resumed.
"""

from __future__ import annotations

import csv
import io
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnlab.data.io import atomic_write_bytes, atomic_write_text, write_json
from attnlab.training.experiments.common import plot_png, refuse_other_runs, train_one
from attnlab.training.run_config import RunConfig, apply_overrides, preset

ATTENTIONS: tuple[str, ...] = ("none", "bahdanau", "luong-general", "luong-local-p")
QUICK = ["data.train_size=300", "data.valid_size=30", "data.test_size=60", "data.max_items=3",
         "data.max_value=99", "data.buckets=4,8,12", "data.max_src_len=12", "model.hidden=32",
         "model.emb_dim=16", "train.batch_size=32", "train.max_steps=20", "train.eval_every=20",
         "train.checkpoint_every=20"]


@dataclass
class BottleneckResult:
    folder: Path
    rows: list[dict[str, Any]]  # one per (attention, bucket)
    summary: list[dict[str, Any]]  # one per attention: short, long, drop
    seconds: float


def experiment_config(*, quick: bool = False, overrides: Sequence[str] = ()) -> RunConfig:
    return apply_overrides(preset("bottleneck"), [*(QUICK if quick else []), *overrides])


def run_bottleneck(out: str | os.PathLike[str], *, quick: bool = False,
                   overrides: Sequence[str] = (), jobs: int = 1,
                   attentions: Sequence[str] = ATTENTIONS,
                   log: Callable[[str], None] | None = None) -> BottleneckResult:
    """Train every model in ``attentions`` on the same data and budget; ``jobs`` at a time
    (each in its own process with ``cores // jobs`` threads)."""
    log = log or (lambda _m: None)
    out = Path(out)
    base = experiment_config(quick=quick, overrides=overrides)
    if jobs < 1:
        raise ValueError(f"jobs: expected >= 1, got {jobs}")
    threads = max(1, (base.train.threads or os.cpu_count() or 1) // jobs)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cfgs = {a: apply_overrides(base, [f"model.attention={a}", "train.progress=false",
                                      f"train.threads={threads}"]) for a in attentions}
    refuse_other_runs(out, cfgs)
    settings = base.to_dict()
    settings["model"]["attention"] = list(attentions)  # one model per entry
    write_json(out / "settings.json", {
        "attentions": list(attentions), "quick": quick, "overrides": list(overrides),
        "jobs": jobs, "threads_per_job": threads, "config": settings})
    results: dict[str, dict[str, Any]] = {}
    if jobs == 1:
        for a in attentions:
            log(f"training {a} ...")
            results[a] = train_one(cfgs[a].to_dict(), str(out / a), threads)
    else:
        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {a: pool.submit(train_one, cfgs[a].to_dict(), str(out / a), threads)
                       for a in attentions}
            for a in attentions:
                results[a] = futures[a].result()
                log(f"{a} done")
    rows, summary = _tables(results, attentions)
    seconds = time.perf_counter() - started
    _write_outputs(out, rows, summary, seconds)
    return BottleneckResult(out, rows, summary, seconds)


def _tables(results: dict[str, dict[str, Any]], attentions: Sequence[str]
            ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows, summary = [], []
    for a in attentions:
        r = results[a]
        buckets = [b for b in r["test_by_length"] if b["n"]]
        for b in buckets:
            rows.append({"attention": a, "bucket": b["bucket"], "n": b["n"], "bleu": b["bleu"],
                         "chrf": b["chrf"], "exact": b["exact"]})
        short, long_ = buckets[0]["bleu"], buckets[-1]["bleu"]
        summary.append({"attention": a, "test_bleu": r["test"]["bleu"], "short_bleu": short,
                        "long_bleu": long_, "drop": round(short - long_, 2),
                        "steps": r["steps"], "train_seconds": r["train_seconds"],
                        "tokens_per_second": r["tokens_per_second"]})
    return rows, summary


def _write_outputs(out: Path, rows: list[dict[str, Any]], summary: list[dict[str, Any]],
                   seconds: float) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "table.csv", buf.getvalue())
    atomic_write_text(out / "table.md", markdown(rows, summary, seconds))
    atomic_write_bytes(out / "bleu_vs_length.png", plot_png(rows))


def markdown(rows: list[dict[str, Any]], summary: list[dict[str, Any]], seconds: float) -> str:
    attns = list(dict.fromkeys(r["attention"] for r in rows))
    buckets = list(dict.fromkeys(r["bucket"] for r in rows))
    bleu = {(r["attention"], r["bucket"]): r["bleu"] for r in rows}
    lines = ["| source length | " + " | ".join(attns) + " |",
             "|---|" + "---:|" * len(attns)]
    for b in buckets:
        lines.append(f"| {b} | " + " | ".join(f"{bleu.get((a, b), float('nan')):.1f}"
                                                for a in attns) + " |")
    lines += ["", "| model | test BLEU | shortest bucket | longest bucket | drop | steps | "
              "train s | target tok/s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summary:
        lines.append(f"| {s['attention']} | {s['test_bleu']:.1f} | {s['short_bleu']:.1f} | "
                     f"{s['long_bleu']:.1f} | {s['drop']:.1f} | {s['steps']} | "
                     f"{s['train_seconds']:.0f} | {s['tokens_per_second']:.0f} |")
    lines += ["", f"Wall time of this invocation: {seconds / 60:.1f} min (models already trained "
              f"in this folder are reused, not retrained)."]
    return "\n".join(lines) + "\n"
