"""The ablations experiment: heads and positional encodings, after Vaswani et al. 2017 Table 3.

Table 3 of the paper varies one thing of the base model at a time. Rows (A) change the number
of heads h at a fixed width, so d_k = d_v = d_model / h shrinks as h grows: a single head was
0.9 BLEU worse than the best setting, and too many heads hurt as well. Row (E) swapped the
sinusoidal positions for learned ones and found nearly identical results. Here the same two
questions are asked of a small Transformer translator on the numbers corpus (the data of the
``architectures`` experiment), with rotary positions (Su et al. 2021) and no positions at all
added to row (E):

- heads 1, 2, 4, 8 at d_model 64 (d_head 64, 32, 16, 8), sinusoidal positions;
- positions sinusoidal, learned, rotary, none at 4 heads (the 4-head sinusoidal model is
  shared by both tables and trained once).

Every variant trains with the same data, seed, step budget and thread count. Outputs in
``--out``: ``results.json``, ``table.md``, ``ablations.png`` and one run folder per variant
(each a usable model; one already holding ``results.json`` is reused, not retrained).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnlab.data.io import atomic_write_bytes, atomic_write_text, write_json
from attnlab.models.transformer.transformer_config import TransformerConfig
from attnlab.training.experiments.architectures import DEFAULTS as ARCH_DATA
from attnlab.training.experiments.architectures import QUICK as ARCH_QUICK
from attnlab.training.experiments.common import (
    experiment_threads,
    parameter_count,
    refuse_other_runs,
    train_one,
)
from attnlab.training.run import open_run
from attnlab.training.run_config import RunConfig, apply_overrides, preset

HEADS: tuple[int, ...] = (1, 2, 4, 8)
POSITIONS: tuple[str, ...] = ("sinusoidal", "learned", "rotary", "none")
SHARED_HEADS, SHARED_POSITIONS = 4, "sinusoidal"  # the base model of both tables
# The base model: d_model 64 so that 8 heads still divide it (d_head 8, even for rotary);
# otherwise the architectures experiment's Transformer (pre-norm, noam warm-up, smoothing).
MODEL = ["model.arch=transformer", "model.d_model=64", "model.layers=2", "model.ffn=256",
         "model.dropout=0.1", "model.norm=pre", "train.lr=1e-3", "train.schedule=noam",
         "train.warmup=300", "train.label_smoothing=0.1"]
# The budget: 7 models x 1000 steps of 64 sentences; ~0.025 s a step at 2 threads on 2 cores
# (measured), so 3.3 min in all with validation and test decoding (benchmarks/.../ablations).
BUDGET = ["train.max_steps=1000", "train.eval_every=250", "train.checkpoint_every=250"]
QUICK_MODEL = ["model.d_model=16", "model.ffn=32", "model.layers=1", "train.warmup=5"]
VARIED = ("model.heads", "model.positions")  # set by the variants, never by --set


@dataclass
class AblationsResult:
    folder: Path
    summary: list[dict[str, Any]]  # one per variant (7)
    rows: list[dict[str, Any]]  # one per (variant, source-length bucket)
    seconds: float


def variant_name(heads: int, positions: str) -> str:
    return f"h{heads}-{positions}"


def variants() -> list[tuple[int, str]]:
    """(heads, positions) of each model to train; the shared base model appears once."""
    grid = [(h, SHARED_POSITIONS) for h in HEADS]
    grid += [(SHARED_HEADS, p) for p in POSITIONS if p != SHARED_POSITIONS]
    return grid


def variant_configs(*, quick: bool = False, overrides: Sequence[str] = (),
                    threads: int = 0) -> dict[str, RunConfig]:
    """One config per variant: the architectures data + the base model + ``overrides`` + the
    variant's heads and positions."""
    for o in overrides:
        key = o.split("=", 1)[0].strip()
        if key in VARIED:
            raise ValueError(f"--set: {key} is what this experiment varies (heads {HEADS}, "
                             f"positions {POSITIONS}); got {o!r}")
    threads = experiment_threads(threads)
    base = apply_overrides(preset("bottleneck"), [
        *ARCH_DATA, *MODEL, *BUDGET, *(ARCH_QUICK if quick else []),
        *(QUICK_MODEL if quick else []), *overrides,
        "train.progress=false", f"train.threads={threads}"])
    return {variant_name(h, p): apply_overrides(base, [f"model.heads={h}", f"model.positions={p}"])
            for h, p in variants()}


def run_ablations(out: str | os.PathLike[str], *, quick: bool = False,
                  overrides: Sequence[str] = (), threads: int = 0,
                  log: Callable[[str], None] | None = None) -> AblationsResult:
    """Train each variant in turn (same threads, data and seed) and tabulate."""
    log = log or (lambda _m: None)
    out = Path(out)
    cfgs = variant_configs(quick=quick, overrides=overrides, threads=threads)
    out.mkdir(parents=True, exist_ok=True)
    refuse_other_runs(out, cfgs)
    started = time.perf_counter()
    summary, rows = [], []
    for i, (name, cfg) in enumerate(cfgs.items(), 1):
        log(f"[{i}/{len(cfgs)}] training {name} ...")
        r = train_one(cfg.to_dict(), str(out / name), cfg.train.threads)
        s = summarize(name, cfg, r, parameter_count(out / name), valid_loss(out / name))
        summary.append(s)
        rows += [{"variant": name, "bucket": b["bucket"], "n": b["n"], "bleu": b["bleu"]}
                 for b in r["test_by_length"] if b["n"]]
        log(f"[{i}/{len(cfgs)}] {name}: test BLEU {s['test_bleu']:.2f}, "
            f"{s['train_seconds']:.0f} s of training")
    seconds = time.perf_counter() - started
    threads_used = next(iter(cfgs.values())).train.threads
    write_json(out / "results.json", {
        "variants": list(cfgs), "heads": list(HEADS), "positions": list(POSITIONS),
        "quick": quick, "overrides": list(overrides), "threads": threads_used,
        "summary": summary, "rows": rows, "seconds": round(seconds, 1),
        "configs": {n: c.to_dict() for n, c in cfgs.items()}})
    atomic_write_text(out / "table.md", markdown(summary, rows, threads_used, seconds))
    atomic_write_bytes(out / "ablations.png", plot_png(summary))
    return AblationsResult(out, summary, rows, seconds)


def valid_loss(folder: Path, batch_size: int = 64) -> float:
    """Teacher-forced cross-entropy (nats per target token, no label smoothing) of the run's
    saved model on its validation split: a finer signal than BLEU when several variants tie."""
    import torch
    from torch import nn

    from attnlab.data.batching import collate, encode_pairs, eval_order
    from attnlab.data.vocab import PAD_ID
    from attnlab.models.translators import load_translator

    model, run = load_translator(folder), open_run(folder)
    model.eval()  # no dropout
    c = run.codec
    data = encode_pairs(run.splits.valid, c.src_tok, c.tgt_tok, c.src_vocab, c.tgt_vocab)
    keep = [i for i in range(len(data)) if data.src[i]]
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD_ID, reduction="sum")
    total, tokens = 0.0, 0
    with torch.no_grad():
        for idx in eval_order([len(data.src[i]) for i in keep], batch_size):
            batch = collate(data, [keep[i] for i in idx])
            logits = model(batch.src, batch.src_lengths, batch.tgt_in).logits  # (B, Lt, V)
            total += float(loss_fn(logits.reshape(-1, logits.shape[-1]),  # (B*Lt, V)
                                   batch.tgt_out.reshape(-1)))  # (B*Lt,)
            tokens += int((batch.tgt_out != PAD_ID).sum())
    return round(total / max(tokens, 1), 5)


def summarize(name: str, cfg: RunConfig, r: dict[str, Any], params: int,
              loss: float) -> dict[str, Any]:
    """One table row from a run's results.json. The last validation entry is the end of
    training; the test BLEU is the best-validated model's (what the run folder keeps)."""
    m = cfg.model
    assert isinstance(m, TransformerConfig)  # every variant is a Transformer (MODEL sets it)
    last = r["history"][-1] if r["history"] else {}
    return {"variant": name, "heads": m.heads, "positions": m.positions, "d_head": m.head_dim,
            "parameters": params, "test_bleu": r["test"]["bleu"], "test_chrf": r["test"]["chrf"],
            "best_valid_bleu": r["best_valid_bleu"], "final_valid_bleu": last.get("valid_bleu"),
            "final_train_loss": last.get("train_loss"), "valid_loss": loss, "steps": r["steps"],
            "train_seconds": r["train_seconds"], "tokens_per_second": r["tokens_per_second"],
            "threads": r["threads"]}


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _table(rows: list[dict[str, Any]], first: str, key: str) -> list[str]:
    lines = [f"| {first} | d_head | parameters | test BLEU | best valid BLEU | final valid BLEU "
             "| valid loss | final train loss | train s | target tok/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in rows:
        lines.append(f"| {s[key]} | {s['d_head']} | {s['parameters']:,} | "
                     f"{_fmt(s['test_bleu'])} | {_fmt(s['best_valid_bleu'])} | "
                     f"{_fmt(s['final_valid_bleu'])} | {_fmt(s['valid_loss'], 3)} | "
                     f"{_fmt(s['final_train_loss'], 3)} | "
                     f"{s['train_seconds']:.0f} | {s['tokens_per_second']:.0f} |")
    return lines


def markdown(summary: list[dict[str, Any]], rows: list[dict[str, Any]], threads: int,
             seconds: float) -> str:
    heads = [s for s in summary if s["positions"] == SHARED_POSITIONS]
    positions = [s for s in summary if s["heads"] == SHARED_HEADS]
    d_model = heads[0]["heads"] * heads[0]["d_head"] if heads else 0
    names = [s["variant"] for s in summary]
    buckets = list(dict.fromkeys(r["bucket"] for r in rows))
    bleu = {(r["variant"], r["bucket"]): r["bleu"] for r in rows}
    lines = [f"Heads at fixed width (d_model {d_model}, sinusoidal positions; Vaswani Table 3 (A)):",
             "", *_table(heads, "heads", "heads"), "",
             f"Positional encoding ({SHARED_HEADS} heads; Vaswani Table 3 (E), plus rotary and "
             "none):", "", *_table(positions, "positions", "positions"), "",
             "Test BLEU by source length (tokens):", "",
             "| source length | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for b in buckets:
        lines.append(f"| {b} | " + " | ".join(_fmt(bleu.get((n, b))) for n in names) + " |")
    lines += ["", f"The {variant_name(SHARED_HEADS, SHARED_POSITIONS)} model is the same run in "
              "both tables. Test BLEU is the best-validated model's; \"final\" columns are the "
              "last validation; valid loss is the teacher-forced cross-entropy (nats per token, "
              "no label smoothing) of the best-validated model. The BLEU and loss columns are "
              "deterministic for a seed; the "
              f"timing columns (train s, tok/s) are clock readings at {threads} thread(s) and "
              "vary between runs.",
              f"Wall time of this invocation: {seconds / 60:.1f} min (models already trained "
              "in this folder are reused)."]
    return "\n".join(lines) + "\n"


def plot_png(summary: list[dict[str, Any]]) -> bytes:
    """Test BLEU per variant: heads (left) and positions (right), one bar each."""
    from matplotlib.figure import Figure  # Agg canvas; pyplot never touched

    fig = Figure(figsize=(8.4, 3.8), dpi=110)
    panels = [([s for s in summary if s["positions"] == SHARED_POSITIONS], "heads",
               "heads (d_model fixed, sinusoidal)"),
              ([s for s in summary if s["heads"] == SHARED_HEADS], "positions",
               f"positions ({SHARED_HEADS} heads)")]
    for i, (rows, key, title) in enumerate(panels, 1):
        ax = fig.add_subplot(1, 2, i)
        labels = [str(s[key]) for s in rows]
        values = [s["test_bleu"] for s in rows]
        bars = ax.bar(range(len(rows)), values, color=[
            "tab:orange" if s["variant"] == variant_name(SHARED_HEADS, SHARED_POSITIONS)
            else "tab:blue" for s in rows])  # the shared base model stands out in both
        ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=8)
        ax.set_xticks(range(len(rows)), labels)
        ax.set_ylim(0, 105)
        ax.set_ylabel("test BLEU")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Ablations after Vaswani et al. 2017 Table 3 (numbers corpus)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
