"""Decode speed with every layer's and head's attention row recorded vs without, alternating.

    .venv/bin/python benchmarks/llm/capture_overhead.py --model gemma3 --threads 2

Prints tokens/s of each run and the median time ratio (llm_bench.py's capture row, on its own,
so it can be repeated at other thread counts without the transformers side).
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from attnlab.inspect.llm.generation import generate_ids, render_prompt
from attnlab.inspect.recorder import AttentionRecorder
from attnlab.models import load_model

PROMPT = "create a python post request handler of a login form"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma3")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    ids = lm.encode(render_prompt(lm, PROMPT)).ids
    generate_ids(lm, ids, max_new_tokens=4, stop_ids=set())  # warm-up
    plain, cap = [], []
    for _ in range(args.rounds):
        _, _, t = generate_ids(lm, ids, max_new_tokens=args.tokens + 1, stop_ids=set())
        plain.append(args.tokens / t["decode_s"])
        rec = AttentionRecorder(lm.model)
        _, _, t = generate_ids(lm, ids, max_new_tokens=args.tokens + 1, stop_ids=set(), recorder=rec)
        rec.remove()
        cap.append(args.tokens / t["decode_s"])
    print(json.dumps({"model": lm.name, "threads": args.threads, "plain_tokens_per_s": plain,
                      "capture_tokens_per_s": cap,
                      "time_ratio": round(statistics.median(plain) / statistics.median(cap), 3)}))


if __name__ == "__main__":
    main()
