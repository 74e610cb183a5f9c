"""Training throughput, Transformer vs Bahdanau translator, over sentence length and batch size.

Vaswani et al. 2017 (§4, Table 1) argue that self-attention trains faster than recurrence: a
layer computes every position at once (O(1) sequential operations) where an RNN walks the
sentence (O(n)). This script measures what that buys on this CPU. One training step =
forward (teacher forcing) + cross-entropy + backward + clip + Adam step, on synthetic batches of
B sentence pairs whose source and target both have L tokens, for the two models of
``attnlab experiment architectures`` (similar parameter counts, the numbers corpus's
vocabularies). The two models alternate within each (B, L) cell, each step timed alone;
the median of ``--repeats`` steps after 2 warm-up steps. Target tokens/s = B·(L+1) / step.

    .venv/bin/python benchmarks/transformer/throughput/throughput.py \\
        --out benchmarks/transformer/throughput
    .venv/bin/python benchmarks/transformer/throughput/throughput.py --profile transformer
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from attnlab.data.vocab import PAD_ID
from attnlab.models.translators import build_translator
from attnlab.training.run_config import apply_overrides, preset
from attnlab.training.experiments.architectures import ARCH_SETTINGS, DEFAULTS

MODELS = ("transformer", "bahdanau")
SRC_VOCAB, TGT_VOCAB = 38, 54  # the architectures experiment's vocabularies


def build(name: str, max_len: int) -> nn.Module:
    extra = [f"model.max_len={max_len + 2}"] if name == "transformer" else []
    cfg = apply_overrides(preset("bottleneck"), [*DEFAULTS, *ARCH_SETTINGS[name], *extra])
    torch.manual_seed(0)  # the vocabularies come from data in a run; here, the corpus's sizes
    return build_translator(replace(cfg.model, src_vocab_size=SRC_VOCAB, tgt_vocab_size=TGT_VOCAB))


def step_seconds(model: nn.Module, opt: torch.optim.Optimizer, b: int, length: int,
                 g: torch.Generator) -> float:
    src = torch.randint(4, SRC_VOCAB, (b, length), generator=g)  # (B, L), no pad/specials
    tgt_in = torch.randint(4, TGT_VOCAB, (b, length + 1), generator=g)  # <s> y1 .. yL
    tgt_out = torch.randint(4, TGT_VOCAB, (b, length + 1), generator=g)  # y1 .. yL </s>
    lengths = torch.full((b,), length)
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD_ID, reduction="sum", label_smoothing=0.1)
    t0 = time.perf_counter()
    model.train()
    logits = model(src, lengths, tgt_in).logits  # (B, L+1, V)
    loss = loss_fn(logits.reshape(-1, TGT_VOCAB), tgt_out.reshape(-1)) / tgt_out.numel()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="8,16,32,64,128,256")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--profile", metavar="MODEL", choices=MODELS,
                    help="print torch.profiler's table of 10 steps of MODEL at batch 64, length 8")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.profile:
        profile(args.profile)
        return
    lengths = [int(x) for x in args.lengths.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    models = {m: build(m, max(lengths)) for m in MODELS}
    params = {m: sum(p.numel() for p in net.parameters()) for m, net in models.items()}
    opts = {m: torch.optim.Adam(net.parameters(), lr=1e-4) for m, net in models.items()}
    rows = []
    for b in batches:
        for n in lengths:
            g = torch.Generator().manual_seed(n * 1000 + b)
            times: dict[str, list[float]] = {m: [] for m in MODELS}
            for i in range(args.repeats + 2):
                for m in MODELS:  # alternate: both see the same machine state
                    t = step_seconds(models[m], opts[m], b, n, g)
                    if i >= 2:
                        times[m].append(t)
            med = {m: statistics.median(times[m]) for m in MODELS}
            tok = b * (n + 1)
            row = {"batch": b, "length": n, **{f"{m}_ms": round(med[m] * 1e3, 2) for m in MODELS},
                   **{f"{m}_tok_s": round(tok / med[m]) for m in MODELS},
                   "ratio": round(med["bahdanau"] / med["transformer"], 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    res = {"command": "python benchmarks/transformer/throughput/throughput.py "
                      f"--lengths {args.lengths} --batches {args.batches} --repeats {args.repeats} "
                      f"--threads {args.threads}",
           "parameters": params, "threads": args.threads, "cpus": os.cpu_count(),
           "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "rows": rows}
    if args.out is not None:
        write(args.out, res)


def profile(name: str) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model = build(name, 8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        step_seconds(model, opt, 64, 8, g)
    with torch_profile(activities=[ProfilerActivity.CPU]) as p:
        ms = [step_seconds(model, opt, 64, 8, g) * 1e3 for _ in range(10)]
    print(f"{name}: median step {statistics.median(ms):.1f} ms (batch 64, length 8)")
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def write(out: Path, res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    p = res["parameters"]
    lines = [f"Transformer ({p['transformer']:,} parameters) vs Bahdanau GRU translator "
             f"({p['bahdanau']:,}), {res['threads']} threads, {res['cpus']} CPUs, torch "
             f"{res['torch']}. Command: `{res['command']} --out benchmarks/transformer/throughput`.",
             "", "| batch | length | Transformer ms/step | Bahdanau ms/step | Transformer tok/s | "
                 "Bahdanau tok/s | Transformer / Bahdanau |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['batch']} | {r['length']} | {r['transformer_ms']} | {r['bahdanau_ms']} | "
                     f"{r['transformer_tok_s']} | {r['bahdanau_tok_s']} | **{r['ratio']}x** |")
    (out / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for b in sorted({r["batch"] for r in res["rows"]}):
        rs = [r for r in res["rows"] if r["batch"] == b]
        ax.plot([r["length"] for r in rs], [r["ratio"] for r in rs], marker="o", label=f"batch {b}")
    ax.axhline(1, color="grey", lw=0.8)
    ax.axhline(3, color="tab:red", lw=0.8, ls="--", label="3x")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("source = target length (tokens)")
    ax.set_ylabel("Transformer / Bahdanau tokens/s")
    ax.set_title("Training throughput ratio (CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)


if __name__ == "__main__":
    main()
