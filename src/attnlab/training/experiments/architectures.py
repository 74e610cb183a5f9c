"""The architectures experiment: Transformer vs Bahdanau vs Luong (general) on the numbers corpus.

Vaswani et al. 2017 (§1, §4) argue that self-attention trains faster than recurrence because
every position of a layer is computed at once, where an RNN walks the sentence step by step.
Here the three translators train one after the other (the same thread count, nothing else
running) on the data of the ``bottleneck`` preset, with configurations of similar parameter
count, and are compared on test BLEU, BLEU by source-length bucket, training throughput
(target tokens per second of training steps) and the steps / training seconds needed to
reach validation BLEU 90 (read from each run's validation history; seconds = steps x the
run's mean step time, validation excluded).

Outputs in ``--out``: ``results.json``, ``table.md``, ``bleu_vs_length.png`` and one run
folder per model (each a usable model; one already holding ``results.json`` is reused).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnlab.data.io import atomic_write_bytes, atomic_write_text, write_json
from attnlab.training.experiments.common import CLOCK as TRAIN_CLOCK
from attnlab.training.experiments.common import (
    experiment_threads,
    parameter_count,
    plot_png,
    refuse_other_runs,
    train_one,
)
from attnlab.training.run_config import RunConfig, all_keys, apply_overrides, preset

MODELS: tuple[str, ...] = ("transformer", "bahdanau", "luong-general")
# Sizes chosen for similar parameter counts (~0.3 M on this corpus; the table reports them).
ARCH_SETTINGS: dict[str, list[str]] = {
    "transformer": ["model.arch=transformer", "model.d_model=72", "model.heads=4",
                    "model.layers=2", "model.ffn=288", "model.dropout=0.1", "model.norm=pre",
                    "train.lr=1e-3", "train.schedule=noam", "train.warmup=300",
                    "train.label_smoothing=0.1"],
    "bahdanau": ["model.attention=bahdanau"],
    "luong-general": ["model.attention=luong-general"],
}
# The budget: ~8 minutes for all three on 2 cores (the bottleneck preset's data, shorter).
DEFAULTS = ["data.max_items=4", "data.train_size=20000", "data.valid_size=200",
            "data.test_size=400", "data.buckets=5,10,15,20,25", "data.max_src_len=25",
            "train.max_steps=700", "train.eval_every=100", "train.checkpoint_every=100",
            "train.patience=0", "train.batch_size=64"]
QUICK = ["data.max_items=3", "data.max_value=99", "data.train_size=200", "data.valid_size=20",
         "data.test_size=40", "data.buckets=4,8,12", "data.max_src_len=12", "train.max_steps=10",
         "train.eval_every=5", "train.checkpoint_every=5", "train.patience=0",
         "train.batch_size=16"]
QUICK_MODEL = {"transformer": ["model.d_model=16", "model.ffn=32", "model.layers=1",
                               "train.warmup=5"],
               "bahdanau": ["model.hidden=16", "model.emb_dim=8"],
               "luong-general": ["model.hidden=16", "model.emb_dim=8"]}
TARGET_BLEU = 90.0
CLOCK = (*TRAIN_CLOCK, "seconds_to_target")  # machine-dependent summary columns


@dataclass
class ArchResult:
    folder: Path
    rows: list[dict[str, Any]]  # one per (model, bucket)
    summary: list[dict[str, Any]]  # one per model
    throughput_ratio: float  # transformer tok/s / bahdanau tok/s
    seconds: float


def model_configs(*, quick: bool = False, overrides: Sequence[str] = (), threads: int = 0,
                  models: Sequence[str] = MODELS) -> dict[str, RunConfig]:
    """One config per model: preset bottleneck + budget + the model's sizes + ``overrides``
    (a ``model.*`` override applies to the models that have that key)."""
    bad = [m for m in models if m not in ARCH_SETTINGS]
    if bad:
        raise ValueError(f"models: expected some of {', '.join(ARCH_SETTINGS)}, got {bad}")
    threads = experiment_threads(threads)
    cfgs = {}
    for m in models:
        sets = [*DEFAULTS, *(QUICK if quick else []), *ARCH_SETTINGS[m],
                *(QUICK_MODEL[m] if quick else [])]
        cfg = apply_overrides(preset("bottleneck"), sets)
        keys = set(all_keys(cfg.arch))
        mine = [o for o in overrides if o.split("=", 1)[0].strip() in keys
                or not o.startswith("model.")]
        cfgs[m] = apply_overrides(cfg, [*mine, "train.progress=false", f"train.threads={threads}"])
    return cfgs


def run_architectures(out: str | os.PathLike[str], *, quick: bool = False,
                      overrides: Sequence[str] = (), threads: int = 0,
                      models: Sequence[str] = MODELS,
                      log: Callable[[str], None] | None = None) -> ArchResult:
    """Train each model in turn (same threads, so the throughputs compare) and tabulate."""
    log = log or (lambda _m: None)
    out = Path(out)
    cfgs = model_configs(quick=quick, overrides=overrides, threads=threads, models=models)
    out.mkdir(parents=True, exist_ok=True)
    refuse_other_runs(out, cfgs)
    started = time.perf_counter()
    results, params = {}, {}
    for i, (m, cfg) in enumerate(cfgs.items(), 1):
        log(f"[{i}/{len(cfgs)}] training {m} ...")
        results[m] = train_one(cfg.to_dict(), str(out / m), cfg.train.threads)
        params[m] = parameter_count(out / m)
        log(f"[{i}/{len(cfgs)}] {m}: test BLEU {results[m]['test']['bleu']:.1f}, "
            f"{results[m]['tokens_per_second']:.0f} target tok/s")
    rows, summary = tables(results, params)
    tps = {s["model"]: s["tokens_per_second"] for s in summary}
    ratio = round(tps["transformer"] / tps["bahdanau"], 2) \
        if "transformer" in tps and tps.get("bahdanau") else float("nan")
    seconds = time.perf_counter() - started
    write_json(out / "results.json", {
        "models": list(cfgs), "quick": quick, "overrides": list(overrides),
        "threads": next(iter(cfgs.values())).train.threads, "target_bleu": TARGET_BLEU,
        "summary": summary, "rows": rows, "throughput_ratio_transformer_vs_bahdanau": ratio,
        "configs": {m: c.to_dict() for m, c in cfgs.items()}})
    atomic_write_text(out / "table.md", markdown(rows, summary, ratio, seconds))
    atomic_write_bytes(out / "bleu_vs_length.png",
                       plot_png([{**r, "attention": r["model"]} for r in rows]))
    return ArchResult(out, rows, summary, ratio, seconds)


def reach(history: list[dict[str, Any]], target: float) -> int | None:
    """The first validated step whose BLEU is at least ``target`` (None: never)."""
    for h in history:
        if h.get("valid_bleu") is not None and h["valid_bleu"] >= target:
            return int(h["step"])
    return None


def tables(results: dict[str, dict[str, Any]], params: dict[str, int]
           ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows, summary = [], []
    for m, r in results.items():
        for b in r["test_by_length"]:
            if b["n"]:
                rows.append({"model": m, "bucket": b["bucket"], "n": b["n"], "bleu": b["bleu"]})
        step90 = reach(r["history"], TARGET_BLEU)
        per_step = r["train_seconds"] / max(r["steps"], 1)
        summary.append({
            "model": m, "parameters": params[m], "test_bleu": r["test"]["bleu"],
            "best_valid_bleu": r["best_valid_bleu"], "steps": r["steps"],
            "train_seconds": r["train_seconds"], "tokens_per_second": r["tokens_per_second"],
            "threads": r["threads"], "steps_to_target": step90,
            "seconds_to_target": None if step90 is None else round(step90 * per_step, 1)})
    return rows, summary


def markdown(rows: list[dict[str, Any]], summary: list[dict[str, Any]], ratio: float,
             seconds: float) -> str:
    models = list(dict.fromkeys(r["model"] for r in rows))
    buckets = list(dict.fromkeys(r["bucket"] for r in rows))
    bleu = {(r["model"], r["bucket"]): r["bleu"] for r in rows}
    lines = ["| model | parameters | test BLEU | steps | train s | target tok/s | "
             f"steps to valid BLEU {TARGET_BLEU:.0f} | train s to BLEU {TARGET_BLEU:.0f} |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summary:
        st = "not reached" if s["steps_to_target"] is None else str(s["steps_to_target"])
        sec = "-" if s["seconds_to_target"] is None else f"{s['seconds_to_target']:.0f}"
        lines.append(f"| {s['model']} | {s['parameters']:,} | {s['test_bleu']:.1f} | "
                     f"{s['steps']} | {s['train_seconds']:.0f} | "
                     f"{s['tokens_per_second']:.0f} | {st} | {sec} |")
    lines += ["", "| source length | " + " | ".join(models) + " |",
              "|---|" + "---:|" * len(models)]
    for b in buckets:
        lines.append(f"| {b} | " + " | ".join(f"{bleu.get((m, b), float('nan')):.1f}"
                                                for m in models) + " |")
    threads = summary[0]["threads"] if summary else 0
    lines += ["", f"Throughput ratio Transformer / Bahdanau: {ratio:.2f}x (target >= 3x; "
              f"{'met' if ratio >= 3 else 'not met'}), all at {threads} thread(s).",
              f"Wall time of this invocation: {seconds / 60:.1f} min (models already trained "
              f"in this folder are reused)."]
    return "\n".join(lines) + "\n"
