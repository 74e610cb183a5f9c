"""SmolLM2-135M-Instruct with weight-only int8 (``DecoderLM.quantize_weights("int8")``) against
float32, same GGUF, same process, same threads (issue 23, item 1):

    .venv/bin/python benchmarks/llm/quantized.py --threads 1 --write benchmarks/llm/quantized-1t.md
    .venv/bin/python benchmarks/llm/quantized.py --threads 2 --write benchmarks/llm/quantized-2t.md

Speed: decode 128 new tokens (greedy, batch 1, KV cache) and prefill 512 tokens, alternating
float32 / int8 runs, medians. Quality: greedy 64 tokens on four prompts (identical or not, and
where they part), the largest and mean logit difference on the first prompt's prefill, and the
perplexity of 1,024 tokens of CPython's reference manual (``attnlab streaming``'s text).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

PROMPTS = [
    "create a python post request handler of a login form",
    "Explain what a hash table is in two sentences.",
    "Write a haiku about the sea.",
    "What is the capital of France, and why is it famous?",
]


def decode_tokens_per_s(lm, n: int = 128, prompt: str = PROMPTS[0]) -> float:
    """Greedy decode of ``n`` new tokens after the chat-rendered ``prompt`` (batch 1, KV cache):
    tokens/s of the ``n`` steps after the prefill step (benchmarks/llm/vs_llama_cpp.py uses it)."""
    from attnlab.inspect.llm.generation import generate_ids, render_prompt

    ids = lm.encode(render_prompt(lm, prompt)).ids
    _, _, t = generate_ids(lm, ids, max_new_tokens=n + 1, stop_ids=set())
    return n / t["decode_s"]


def prefill_ids(n: int = 512):
    """(1, n) fixed pseudo-random token ids: the prefill input."""
    import torch

    return torch.randint(100, 40000, (1, n), generator=torch.Generator().manual_seed(0))


def prefill_s(lm, ids) -> float:
    """Seconds of one forward pass over ``ids`` (logits of the last position only)."""
    import torch

    with torch.no_grad():
        t0 = time.perf_counter()
        lm.model(ids, logits_to_keep=1)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--write", type=Path, default=None, help="markdown result (a .json beside it)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from attnlab.inspect.llm.generation import generate_ids, render_prompt
    from attnlab.inspect.llm.streaming import default_text, token_nll
    from attnlab.models import load_model

    ref, q = load_model("smollm2"), load_model("smollm2")
    q.model.quantize_weights("int8")
    models = {"float32": ref, "int8": q}

    long_ids = prefill_ids(512)

    def decode(lm) -> float:
        return decode_tokens_per_s(lm, 128)

    def prefill(lm) -> float:
        return prefill_s(lm, long_ids)

    for lm in models.values():  # warm-up
        decode(lm), prefill(lm)
    speed: dict[str, list[float]] = {f"{m} {k}": [] for m in models for k in ("decode", "prefill")}
    for i in range(args.runs):
        print(f"round {i + 1}/{args.runs}", file=sys.stderr, flush=True)
        for name, lm in models.items():
            speed[f"{name} decode"].append(decode(lm))
            speed[f"{name} prefill"].append(prefill(lm))
    med = {k: statistics.median(v) for k, v in speed.items()}

    greedy = []
    for p in PROMPTS:
        outs = {}
        for name, lm in models.items():
            ids = lm.encode(render_prompt(lm, p)).ids
            new, _, _ = generate_ids(lm, ids, max_new_tokens=64, stop_ids=set())
            outs[name] = new
        a, b = outs["float32"], outs["int8"]
        part = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)
        greedy.append({"prompt": p, "identical": part is None, "parts_at": part,
                       "float32": ref.tokenizer.decode(a), "int8": ref.tokenizer.decode(b)})
    ids = torch.tensor([ref.encode(render_prompt(ref, PROMPTS[0])).ids])
    with torch.no_grad():
        la, lb = ref.model(ids).logits, q.model(ids).logits
    text_ids = torch.tensor([ref.tokenizer.piece_ids(default_text())[:1024]])
    with torch.no_grad():
        ppl = {name: float(token_nll(lm.model, text_ids).double().mean().exp())
               for name, lm in models.items()}
    command = f"benchmarks/llm/quantized.py --threads {args.threads}"
    result = {
        "command": command + (f" --write {args.write}" if args.write else ""),
        "machine": f"{os.cpu_count()} CPUs, torch threads {args.threads}, load average after "
                   f"{os.getloadavg()[0]:.2f}, {platform.python_version()}, torch {torch.__version__}",
        "runs": args.runs, "speed": speed, "median": med,
        "decode_ratio": med["int8 decode"] / med["float32 decode"],
        "prefill_ratio": med["float32 prefill"] / med["int8 prefill"],
        "greedy": greedy, "logit_diff_max": float((la - lb).abs().max()),
        "logit_diff_mean": float((la - lb).abs().mean()), "logit_abs_mean": float(la.abs().mean()),
        "perplexity": ppl, "perplexity_ratio": ppl["int8"] / ppl["float32"],
    }
    md = [f"# SmolLM2-135M-Instruct: weight-only int8 against float32 ({args.threads} thread(s))", "",
          f"Command: `.venv/bin/python {result['command']}`", "", f"Machine: {result['machine']}.", "",
          f"Medians of {args.runs} alternating rounds:", "",
          "| measure | float32 | int8 | int8 / float32 |", "|---|---|---|---|",
          f"| decode, 128 new tokens (tokens/s) | {med['float32 decode']:.1f} | {med['int8 decode']:.1f} | "
          f"**{result['decode_ratio']:.2f}x** speed |",
          f"| prefill, 512 tokens (s) | {med['float32 prefill']:.3f} | {med['int8 prefill']:.3f} | "
          f"**{result['prefill_ratio']:.2f}x** speed |",
          f"| perplexity, 1,024 tokens of the CPython reference manual | {ppl['float32']:.3f} | "
          f"{ppl['int8']:.3f} | {result['perplexity_ratio']:.4f}x |", "",
          f"Logits on the first prompt's prefill: largest difference {result['logit_diff_max']:.3f}, mean "
          f"{result['logit_diff_mean']:.4f} (mean |logit| {result['logit_abs_mean']:.2f}).", "",
          "| prompt | greedy 64 tokens | float32 | int8 |", "|---|---|---|---|"]
    for g in greedy:
        same = "identical" if g["identical"] else f"part at token {g['parts_at']}"
        md.append(f"| {g['prompt']} | {same} | {g['float32'][:90]!r} | {g['int8'][:90]!r} |")
    text = "\n".join(md) + "\n"
    print(text)
    if args.write:
        args.write.write_text(text, encoding="utf-8")
        args.write.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
