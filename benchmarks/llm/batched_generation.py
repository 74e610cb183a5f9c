"""Batched decode against one sequence, capture on and off (issue 23's batched target).

The same prompt sampled ``--rows`` times in one batch (``generate_batch``) against one row,
alternating, same threads; tokens/s counts every generated token of every row over the whole
call (prefill included, as a user waits for it). No stop token: every row makes exactly
``--new-tokens`` tokens. Writes RESULTS-batched-{threads}t[-{weights}].{md,json} beside this
file with ``--write``.

    .venv/bin/python benchmarks/llm/batched_generation.py --threads 1 --rounds 3 --write
    .venv/bin/python benchmarks/llm/batched_generation.py --threads 1 --rounds 3 --weights int4 --write
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPT = "Write a python function that checks whether a number is prime."
TARGETS = {"batched": 4.0, "capture": 1.3}  # rows x tokens/s >= 4x one row; capture cost <= 1.3x


def run(lm, rows: int, new_tokens: int, capture: bool) -> float:
    from attnlab.inspect.llm import batch_rows
    from attnlab.inspect.llm.batch_capture import BatchRecorder
    from attnlab.inspect.llm.batch_generation import row_samplings
    from attnlab.inspect.llm.generation import Sampling, fit_prompt

    ids = tuple(fit_prompt(lm, PROMPT).ids)
    plans = row_samplings(Sampling(greedy=False, temperature=0.8, seed=0), rows)
    batch = [batch_rows.Row(ids, sampling=s) for s in plans]
    rec = BatchRecorder(lm.model, rows) if capture else None
    t0 = time.perf_counter()
    try:
        got = batch_rows.generate_rows(lm, batch, max_new_tokens=new_tokens, stop_ids=set(), recorder=rec)
    finally:
        if rec is not None:
            rec.remove()
    seconds = time.perf_counter() - t0
    assert all(len(new) == new_tokens for new, _ in got)
    return rows * new_tokens / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--weights", choices=("float32", "int8", "int4"), default="float32")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import torch
    from rich.progress import track

    from attnlab.models import load_model
    from attnlab.threads import apply_threads

    apply_threads(args.threads)
    lm = load_model("smollm2", weights=args.weights)
    load = [os.getloadavg()]
    modes = [(1, False), (1, True), (args.rows, False), (args.rows, True)]
    run(lm, 2, 4, True)  # warm-up
    samples: dict[str, list[float]] = {f"{r}x{'capture' if c else 'plain'}": [] for r, c in modes}
    steps = [(i, m) for i in range(args.rounds) for m in (modes if i % 2 == 0 else modes[::-1])]
    for _, (r, c) in track(steps, description="batched decode", console=None, transient=True):
        samples[f"{r}x{'capture' if c else 'plain'}"].append(run(lm, r, args.new_tokens, c))
    load.append(os.getloadavg())
    med = {k: statistics.median(v) for k, v in samples.items()}
    one, many = med["1xcapture"], med[f"{args.rows}xcapture"]
    res = {
        "command": "python " + " ".join([f"benchmarks/llm/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "threads": args.threads, "weights": args.weights, "torch_threads": torch.get_num_threads(), "rows": args.rows,
        "new_tokens": args.new_tokens, "rounds": args.rounds, "load_average": load,
        "tokens_per_s_median": med, "samples": samples,
        "batched_over_one_capture_on": round(many / one, 2),
        "capture_cost_one": round(med["1xplain"] / one, 3),
        "capture_cost_batched": round(med[f"{args.rows}xplain"] / many, 3),
    }
    res["met"] = {"batched >= 4x one row (capture on)": res["batched_over_one_capture_on"] >= TARGETS["batched"],
                  "capture cost <= 1.3x (one row)": res["capture_cost_one"] <= TARGETS["capture"],
                  "capture cost <= 1.3x (batched)": res["capture_cost_batched"] <= TARGETS["capture"]}
    md = [f"# Batched decode, SmolLM2-135M-Instruct, {args.weights} weights, {args.threads} thread(s)", "",
          f"`{res['command']}` — {args.rows} sampled rows of one prompt vs one row, {args.new_tokens} new tokens "
          f"each, medians of {args.rounds} alternating rounds; load average before/after {load[0]} / {load[-1]}.", "",
          "| rows | capture | tokens/s (all rows) |", "|---|---|---|"]
    md += [f"| {r} | {'on' if c else 'off'} | {med[f'{r}x' + ('capture' if c else 'plain')]:.1f} |" for r, c in modes]
    md += ["", f"- {args.rows} rows / 1 row, capture on: **{res['batched_over_one_capture_on']}x** (target >= 4x)",
           f"- capture cost, 1 row: {res['capture_cost_one']}x; {args.rows} rows: {res['capture_cost_batched']}x "
           "(target <= 1.3x)", ""] + [f"- {k}: {'met' if v else '**not met**'}" for k, v in res["met"].items()]
    if args.write:
        stem = HERE / f"RESULTS-batched-{args.threads}t{'' if args.weights == 'float32' else '-' + args.weights}"
        stem.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
        stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(json.dumps(res, indent=1) if args.json else "\n".join(md))


if __name__ == "__main__":
    main()
