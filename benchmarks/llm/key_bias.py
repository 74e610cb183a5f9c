"""One task of the prompt experiment decoded as a batch, its interventions as ``KeyBias`` (folded
into the mask: SDPA's fused kernel) against the same per-row tables as a plain score_mod closure
(which sends attention to the eager reference), same run, alternating, medians:

    .venv/bin/python benchmarks/llm/key_bias.py --threads 1 --runs 3

Rows: the review flow's 10 conditions + a knockout in all layers + a random knockout + a knockout
in layers 0-9 + PASTA in 8 heads, each greedy and 4 samples (70 rows), 24 new tokens, SmolLM2.
Both paths must give the same tokens (checked).
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from attnlab.data.prompt_sets import builtin_prompt_set
    from attnlab.inspect.llm import batch_rows
    from attnlab.inspect.llm.batch_rows import Row, generate_rows
    from attnlab.inspect.llm.generation import Sampling
    from attnlab.inspect.llm.prompt_design import ExperimentConfig, conditions, plan_task
    from attnlab.models import load_model

    lm = load_model("smollm2")
    ps, cfg = builtin_prompt_set(), ExperimentConfig()
    conds = conditions(ps, cfg)
    p = plan_task(lm, ps.tasks[0], conds, cfg, ps.lexicons, cfg.max_new_tokens)
    topic, added = tuple(p.ids["topic"]), tuple(p.added["topic"])
    heads = ((20, 1), (21, 2), (22, 3), (23, 4), (24, 2), (25, 0), (26, 1), (29, 3))
    arms = [Row(tuple(p.ids[c])) for c in conds] + [
        Row(topic, knock=added), Row(topic, knock=tuple(p.random_positions(len(added), 0))),
        Row(topic, knock=added, layers=tuple(range(10))),
        Row(topic, steer=added, heads=heads, alpha=0.01)]
    samplings = [Sampling()] + [Sampling(greedy=False, temperature=0.8, seed=s + 1) for s in range(4)]
    rows = [Row(r.ids, r.knock, r.layers, r.heads, s, (), r.steer, r.alpha) for r in arms for s in samplings]
    fused_mods = batch_rows._mods

    def as_closures(tables):  # the same additions, but a callable attention cannot fold
        def make(t):
            return lambda score, b, h, q, kv: score + t[b, h, kv]
        return {layer: make(t) for layer, t in tables.items()}

    def run(closures: bool):
        with mock.patch.object(batch_rows, "_mods", as_closures if closures else fused_mods):
            t0 = time.perf_counter()
            out = generate_rows(lm, rows, max_new_tokens=cfg.max_new_tokens, stop_ids=set(),
                                prefix_limit=min(added), prefix_store={})
            return time.perf_counter() - t0, [ids for ids, _ in out]

    times: dict[str, list[float]] = {"KeyBias (fused)": [], "closure (eager)": []}
    for i in range(args.runs):
        for closures in ((False, True) if i % 2 == 0 else (True, False)):
            t, ids = run(closures)
            times["closure (eager)" if closures else "KeyBias (fused)"].append(t)
            if i == 0 and not closures:
                first = ids
            elif i == 0:
                same = ids
    agree = sum(a == b for a, b in zip(first, same, strict=True))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{len(rows)} rows x {cfg.max_new_tokens} tokens, {args.threads} thread(s), "
          f"medians of {args.runs}:")
    for k, v in med.items():
        print(f"  {k}: {v:.2f} s  ({', '.join(f'{x:.2f}' for x in times[k])})")
    print(f"  ratio closure / KeyBias: {med['closure (eager)'] / med['KeyBias (fused)']:.2f}x; "
          f"rows with identical tokens: {agree}/{len(rows)}")


if __name__ == "__main__":
    main()
