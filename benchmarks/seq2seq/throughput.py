"""Training and decoding throughput of the seq2seq models, in target tokens per second.

    .venv/bin/python benchmarks/seq2seq/throughput.py [--threads 1] [--steps 60] [--out DIR]

Model and data as preset ``numbers`` (hidden 128, embeddings 64, batch 64, 1-3 numbers per
sentence, English words -> Spanish words). For each attention option: ``--steps`` training
steps after 5 warm-up steps (forward, backward, Adam), then greedy decoding of 512 sentences.
Writes ``throughput.csv`` and ``throughput.md`` to ``--out`` (default: this folder).
"""

from __future__ import annotations

import argparse
import csv
import platform
import time
from pathlib import Path

import torch

from attnlab.data.batching import collate, encode_pairs, epoch_order, eval_order, pad
from attnlab.data.corpora import number_pairs
from attnlab.data.vocab import Vocab
from attnlab.models.seq2seq import ATTENTIONS, Seq2Seq
from attnlab.training.run_config import apply_overrides, preset
from attnlab.training.search import greedy, max_lengths


def bench(attention: str, input_feed: bool, steps: int, data, vocabs) -> dict:
    sv, tv = vocabs
    cfg = apply_overrides(preset("numbers"), [f"model.attention={attention}",
                                              f"model.input_feed={input_feed}"])
    mcfg = cfg.model
    mcfg.src_vocab_size, mcfg.tgt_vocab_size = len(sv), len(tv)
    torch.manual_seed(0)
    model = Seq2Seq(mcfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    batches = epoch_order([len(s) for s in data.src], cfg.train.batch_size, 1, 0)
    tokens, seconds = 0, 0.0
    for i, idx in enumerate(batches[: steps + 5]):
        b = collate(data, idx)
        t0 = time.perf_counter()
        model.train()
        logits = model(b.src, b.src_lengths, b.tgt_in).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(tv)),
                                                 b.tgt_out.reshape(-1), ignore_index=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 5:  # warm-up excluded
            seconds += time.perf_counter() - t0
            tokens += b.n_target_tokens
    srcs = data.src[:512]
    t0 = time.perf_counter()
    out_tokens = 0
    for idx in eval_order([len(s) for s in srcs], 128):
        src, lengths = pad([srcs[i] for i in idx])
        hyps = greedy(model, src, lengths, max_lengths(lengths))
        out_tokens += sum(len(h.tokens) + h.finished for h in hyps)
    decode_s = time.perf_counter() - t0
    return {"attention": attention, "input_feed": input_feed,
            "train_tok_s": round(tokens / seconds), "train_steps_s": round(steps / seconds, 1),
            "greedy_tok_s": round(out_tokens / decode_s)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = preset("numbers")
    pairs = number_pairs(6000, seed=1, max_items=cfg.data.max_items)
    st = tt = cfg.data.src_tokenizer
    sv = Vocab.build(st.tokenize(p.src) for p in pairs)
    tv = Vocab.build(tt.tokenize(p.tgt) for p in pairs)
    data = encode_pairs(pairs, st, tt, sv, tv)
    runs = [(a, True) for a in ATTENTIONS] + [("luong-general", False)]
    rows = [bench(a, f, args.steps, data, (sv, tv)) for a, f in runs]
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "throughput.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cpu = platform.processor() or platform.machine()
    lines = [f"torch {torch.__version__}, {args.threads} thread(s), {cpu}",
             "", "| attention | input feed | train target tok/s | train steps/s | greedy tok/s |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {r['attention']} | {r['input_feed']} | {r['train_tok_s']} | "
              f"{r['train_steps_s']} | {r['greedy_tok_s']} |" for r in rows]
    (args.out / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
