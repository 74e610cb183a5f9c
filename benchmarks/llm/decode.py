"""Decode speed of SmolLM2-135M-Instruct at batch 1 (issue 23, item 2): this checkout against
another one (``--baseline``: the ``src`` folder of a checkout of an earlier commit), in
alternating child processes A B A B ..., each ratio taken pair by pair so that a machine shared
with other work drifts out of it:

    .venv/bin/python benchmarks/llm/decode.py --baseline ../attnlab-main/src --weights int8 --threads 1

A child loads the model, decodes 16 tokens (warm-up), then ``--tokens`` new tokens greedily after
a chat prompt (KV cache, no stop token) and prints its tokens per second of wall time and per
second of its own CPU time (steadier on a busy machine; with 2 threads it counts both); the load
average is read before every pair. ``--tiny`` times a random model of SmolLM2's depth and heads
but width 128 instead: the per-step overhead alone. ``--check`` instead runs each side once on
four prompts and compares the greedy tokens (64 each): they must be identical.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPTS = [
    "create a python post request handler of a login form",
    "Explain what a hash table is in two sentences.",
    "Write a haiku about the sea.",
    "What is the capital of France, and why is it famous?",
]
HERE = Path(__file__).resolve()
SRC = HERE.parents[2] / "src"


def tiny_child(weights: str, tokens: int) -> None:
    """SmolLM2's depth and heads (30 layers, 9 query heads sharing 3 K/V heads) at a width of 128
    (head dim 32), random weights: the matmuls are tiny, so a step's time is the loop's overhead
    (Python, dispatch, small ops), which memory traffic from other work on the machine barely
    moves."""
    import torch

    from attnlab.models.llama import Llama, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=30, num_heads=9,
                      num_kv_heads=3, head_dim=32, max_positions=2048, rope_theta=100000.0,
                      tie_word_embeddings=True)
    m = Llama(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.02)  # keeps 30 layers' activations finite
    m.quantize_weights(weights)  # "float32": as it is
    with torch.inference_mode():
        for _ in range(2):  # the first is the warm-up
            cache = m.new_cache()
            logits = m(torch.arange(1, 40).view(1, -1), cache=cache, logits_to_keep=1).logits
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(tokens):
                logits = m(logits[0, -1].argmax().view(1, 1), cache=cache, logits_to_keep=1).logits
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"tokens_per_s": tokens / wall, "tokens_per_cpu_s": tokens / cpu}))


def child(weights: str, threads: int, tokens: int, check: bool, tiny: bool = False) -> None:
    import torch

    torch.set_num_threads(threads)
    if tiny:
        tiny_child(weights, tokens)
        return
    from attnlab.inspect.llm.generation import generate_ids, render_prompt
    from attnlab.models import load_model

    lm = load_model("smollm2", weights=weights)
    if check:
        out = [generate_ids(lm, lm.encode(render_prompt(lm, p)).ids, max_new_tokens=64, stop_ids=set())[0]
               for p in PROMPTS]
        print(json.dumps({"tokens": out}))
        return
    ids = lm.encode(render_prompt(lm, PROMPTS[0])).ids
    generate_ids(lm, ids, max_new_tokens=16, stop_ids=set())  # warm-up
    cpu: list[float] = []  # process CPU time at each token: less sensitive to a busy machine
    _, _, t = generate_ids(lm, ids, max_new_tokens=tokens + 1, stop_ids=set(),
                           on_token=lambda _: cpu.append(time.process_time()))
    print(json.dumps({"tokens_per_s": tokens / t["decode_s"],
                      "tokens_per_cpu_s": tokens / (cpu[-1] - cpu[0])}))


def run(src: Path, args: argparse.Namespace, check: bool = False) -> dict:
    cmd = [sys.executable, str(HERE), "--child", "--weights", args.weights, "--threads", str(args.threads),
           "--tokens", str(args.tokens)] + (["--check"] if check else []) + (["--tiny"] if args.tiny else [])
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", type=Path, help="src folder of the checkout to compare against")
    ap.add_argument("--weights", choices=("float32", "int8", "int4"), default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--check", action="store_true", help="compare greedy tokens instead of timing")
    ap.add_argument("--tiny", action="store_true",
                    help="a random SmolLM2-shaped model of width 128: the loop's overhead alone")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.weights, args.threads, args.tokens, args.check, args.tiny)
        return
    if args.baseline is None:
        ap.error("--baseline: expected the src folder of another checkout")
    if args.check:
        a, b = run(SRC, args, check=True)["tokens"], run(args.baseline, args, check=True)["tokens"]
        for p, x, y in zip(PROMPTS, a, b, strict=True):
            print(f"{'identical' if x == y else 'DIFFERENT'}: {p!r} ({len(x)} tokens)")
        sys.exit(0 if a == b else 1)
    rows = []
    for i in range(args.pairs):
        load = os.getloadavg()[0]
        new, old = run(SRC, args), run(args.baseline, args)
        rows.append((load, new, old))
        print(f"pair {i + 1}: load {load:.2f}; tokens/s this {new['tokens_per_s']:.2f}, baseline "
              f"{old['tokens_per_s']:.2f}, ratio {new['tokens_per_s'] / old['tokens_per_s']:.3f}; per CPU "
              f"second ratio {new['tokens_per_cpu_s'] / old['tokens_per_cpu_s']:.3f}", flush=True)
    loads = [r[0] for r in rows]
    print(f"{args.weights}, {args.threads} thread(s), {args.tokens} tokens, {args.pairs} pairs, load average "
          f"{min(loads):.2f}-{max(loads):.2f}:")
    for key, what in (("tokens_per_s", "tokens/s (wall)"), ("tokens_per_cpu_s", "tokens per CPU second")):
        ratios = sorted(r[1][key] / r[2][key] for r in rows)
        print(f"  {what}: ratio this/baseline median {statistics.median(ratios):.3f} (min {ratios[0]:.3f}, "
              f"max {ratios[-1]:.3f}); medians this {statistics.median(r[1][key] for r in rows):.2f}, "
              f"baseline {statistics.median(r[2][key] for r in rows):.2f}")


if __name__ == "__main__":
    main()
