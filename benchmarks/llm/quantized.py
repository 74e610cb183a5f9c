"""SmolLM2-135M-Instruct (or Gemma 3 270M) with weight-only int8 and int4
(``DecoderLM.quantize_weights``) against float32, same GGUF, same process, same threads (issue 23):

    .venv/bin/python benchmarks/llm/quantized.py --threads 1 --write benchmarks/llm/quantized-1t.md
    .venv/bin/python benchmarks/llm/quantized.py --threads 2 --write benchmarks/llm/quantized-2t.md
    .venv/bin/python benchmarks/llm/quantized.py --model gemma3 --threads 1 --runs 3 \
        --write benchmarks/llm/quantized-gemma3-1t.md

Speed: decode 128 new tokens (greedy, batch 1, KV cache) and prefill 512 tokens, alternating
float32 / int8 / int4 runs, medians; each format decodes through the native kernel
(``attnlab.models.fast_decode``) and through torch's operators. Quality: greedy 64 tokens on four
prompts (identical or not, and where they part), the largest and mean logit difference on the
first prompt's prefill and on 64 decode steps fed float32's own answer (each decode path), and the
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


def decode_tokens_per_s(lm, n: int = 128, prompt: str = PROMPTS[0], kernel: str = "auto") -> float:
    """Greedy decode of ``n`` new tokens after the chat-rendered ``prompt`` (batch 1, KV cache):
    tokens/s of the ``n`` steps after the prefill step (benchmarks/llm/vs_llama_cpp.py uses it).
    ``kernel``: generate_ids' decode_kernel ("auto": the native kernel where it applies)."""
    from attnlab.inspect.llm.generation import generate_ids, render_prompt

    ids = lm.encode(render_prompt(lm, prompt)).ids
    _, _, t = generate_ids(lm, ids, max_new_tokens=n + 1, stop_ids=set(), decode_kernel=kernel)
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


def float32_margin(ref, ids: list[int], mine: int, theirs: int) -> float:
    """float32's logit of its own greedy token minus that of the token the quantized model took,
    where they part: a near-tie (small against the logit differences above) parts on any
    perturbation, a large margin would be the format's doing."""
    import torch

    with torch.no_grad():
        logits = ref.model(torch.tensor([ids]), logits_to_keep=1).logits[0, -1]  # (V,)
    return float(logits[mine] - logits[theirs])


def weight_error(ref, lm) -> dict[str, float]:
    """Largest and mean |w - w_file| over the blocks' projection weights, relative to the mean
    |w_file|: what the format itself costs, before any activation."""
    import torch

    worst, total, n, scale = 0.0, 0.0, 0, 0.0
    with torch.no_grad():
        for a, b in zip((m for m in ref.model.layers.modules() if isinstance(m, torch.nn.Linear)),
                                (m for m in lm.model.layers.modules() if hasattr(m, "dequantized")),
                                strict=True):
            d = (b.dequantized() - a.weight).abs()
            worst, total, n = max(worst, float(d.max())), total + float(d.sum()), n + d.numel()
            scale += float(a.weight.abs().sum())
    return {"max": worst / (scale / n), "mean": total / scale}


def step_logits(lm, kernel: str, prompt_ids: list[int], forced: list[int], float_math: bool = False):
    """Logits (len(forced), V) of decode steps fed ``forced`` one by one after the prompt, through
    the decode path ``kernel`` picks ("auto": the native kernel where it applies). ``float_math``:
    in the decode steps every quantized layer computes in float32 from its dequantized weight
    instead (hooks: the PyTorch path), what either path would give without rounding its
    activations."""
    import torch
    import torch.nn.functional as F

    from attnlab.models.fast_decode import choose_decoder
    from attnlab.models.quantized import Int8Linear
    from attnlab.models.quantized_int4 import Int4Linear

    def dequantized(mod, inp, out):
        return F.linear(inp[0].float(), mod.dequantized(), mod.bias)

    native, _ = choose_decoder(lm.model, kernel)
    rows = []
    with torch.inference_mode():
        cache = lm.model.new_cache()
        lm.model(torch.tensor([prompt_ids]), cache=cache, logits_to_keep=1)
        # after the prefill: every path starts from the same cache (a short prompt prefills on
        # torch's kernels, bfloat16 activations), so the decode steps alone are compared
        hooks = [m.register_forward_hook(dequantized) for m in lm.model.modules()
                 if float_math and isinstance(m, (Int4Linear, Int8Linear))]
        for t in forced:
            rows.append(native.step(t, cache) if native is not None
                        else lm.model(torch.tensor([[t]]), cache=cache, logits_to_keep=1).logits[0, -1])
    for h in hooks:
        h.remove()
    return torch.stack(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("smollm2", "gemma3"), default="smollm2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--weights", nargs="+", choices=("int8", "int4"), default=["int8", "int4"],
                    help="formats to compare with float32")
    ap.add_argument("--write", type=Path, default=None, help="markdown result (a .json beside it)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from attnlab.inspect.llm.generation import generate_ids, render_prompt
    from attnlab.inspect.llm.streaming import default_text, token_nll
    from attnlab.models import load_model

    ref = load_model(args.model)
    models = {"float32": ref}
    for fmt in args.weights:
        models[fmt] = load_model(args.model, weights=fmt)
    formats = list(args.weights)
    # each format decodes twice: through the native kernel ("auto" picks it) and through torch's
    # operators; prefill and perplexity do not depend on the decode path
    engines = {"float32": ("float32", "torch")}
    for fmt in formats:
        engines[fmt] = (fmt, "auto")
        engines[f"{fmt} torch"] = (fmt, "torch")
    quantized = [e for e in engines if e != "float32"]

    long_ids = prefill_ids(512)

    def decode(engine: str) -> float:
        fmt, kernel = engines[engine]
        return decode_tokens_per_s(models[fmt], 128, kernel=kernel)

    def prefill(lm) -> float:
        return prefill_s(lm, long_ids)

    for e in engines:  # warm-up (and the native kernel's packing)
        decode(e)
    for lm in models.values():
        prefill(lm)
    speed: dict[str, list[float]] = {f"{e} decode": [] for e in engines}
    speed |= {f"{m} prefill": [] for m in models}
    for i in range(args.runs):
        print(f"round {i + 1}/{args.runs}", file=sys.stderr, flush=True)
        for e in engines:
            speed[f"{e} decode"].append(decode(e))
        for name, lm in models.items():
            speed[f"{name} prefill"].append(prefill(lm))
    med = {k: statistics.median(v) for k, v in speed.items()}

    greedy = []
    kernels_used: dict[str, str] = {}
    for p in PROMPTS:
        outs = {}
        for e, (fmt, kernel) in engines.items():
            lm = models[fmt]
            ids = lm.encode(render_prompt(lm, p)).ids
            new, _, t = generate_ids(lm, ids, max_new_tokens=64, stop_ids=set(), decode_kernel=kernel)
            outs[e] = new
            kernels_used[e] = t["decode_kernel"]
        row: dict = {"prompt": p, "float32": ref.tokenizer.decode(outs["float32"])}
        prompt_ids = ref.encode(render_prompt(ref, p)).ids
        for e in quantized:
            a, b = outs["float32"], outs[e]
            part = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)
            row[e] = {"identical": part is None, "parts_at": part, "text": ref.tokenizer.decode(b),
                      "margin": None if part is None
                      else float32_margin(ref, prompt_ids + a[:part], a[part], b[part])}
        greedy.append(row)
    # decode steps fed float32's own greedy tokens: each path's logits against float32's, step by step
    p0 = ref.encode(render_prompt(ref, PROMPTS[0])).ids
    forced, _, _ = generate_ids(ref, p0, max_new_tokens=64, stop_ids=set())
    steps = {e: step_logits(models[fmt], kernel, p0, forced) for e, (fmt, kernel) in engines.items()}
    exact = {fmt: step_logits(models[fmt], "torch", p0, forced, float_math=True) for fmt in formats}
    ids = torch.tensor([p0])
    text_ids = torch.tensor([ref.tokenizer.piece_ids(default_text())[:1024]])
    with torch.no_grad():
        logits = {name: lm.model(ids).logits for name, lm in models.items()}
        ppl = {name: float(token_nll(lm.model, text_ids).double().mean().exp())
               for name, lm in models.items()}
    la, ls = logits["float32"], steps["float32"]
    per_format = {
        fmt: {"prefill_ratio": med["float32 prefill"] / med[f"{fmt} prefill"],
              "logit_diff_max": float((la - logits[fmt]).abs().max()),
              "logit_diff_mean": float((la - logits[fmt]).abs().mean()),
              "perplexity_ratio": ppl[fmt] / ppl["float32"],
              "weight_error": weight_error(ref, models[fmt])}
        for fmt in formats}
    per_engine = {
        e: {"decode_kernel": kernels_used[e], "decode_ratio": med[f"{e} decode"] / med["float32 decode"],
            "greedy_identical": sum(g[e]["identical"] for g in greedy),
            "step_logit_diff_max": float((ls - steps[e]).abs().max()),
            "step_logit_diff_mean": float((ls - steps[e]).abs().mean()),
            # against float32 arithmetic on the same quantized weights: what the path itself adds
            "vs_float_math_max": float((exact[engines[e][0]] - steps[e]).abs().max()),
            "vs_float_math_mean": float((exact[engines[e][0]] - steps[e]).abs().mean())}
        for e in quantized}
    command = ("benchmarks/llm/quantized.py" + ("" if args.model == "smollm2" else f" --model {args.model}")
               + f" --threads {args.threads}" + ("" if args.runs == 5 else f" --runs {args.runs}")
               + f" --weights {' '.join(formats)}")
    result = {
        "command": command + (f" --write {args.write}" if args.write else ""),
        "machine": f"{os.cpu_count()} CPUs, torch threads {args.threads}, load average after "
                   f"{os.getloadavg()[0]:.2f}, {platform.python_version()}, torch {torch.__version__}",
        "runs": args.runs, "speed": speed, "median": med, "formats": per_format, "engines": per_engine,
        "greedy": greedy, "logit_abs_mean": float(la.abs().mean()), "perplexity": ppl,
    }
    names = ["float32", *formats]
    title = {"smollm2": "SmolLM2-135M-Instruct", "gemma3": "Gemma 3 270M"}[args.model]
    md = [f"# {title}: weight-only {', '.join(formats)} against float32 "
          f"({args.threads} thread(s))", "",
          f"Command: `.venv/bin/python {result['command']}`", "", f"Machine: {result['machine']}.", "",
          f"Medians of {args.runs} alternating rounds (float32 is the GGUF's quantized blocks read as "
          f"float32, the reference). Each format decodes through the native kernel "
          f"(`attnlab.models.fast_decode`, `--decode-kernel auto`) and through torch's operators "
          f"(`torch`); prefill and perplexity do not depend on the decode path.", "",
          "| decode path | decode, 128 new tokens (tokens/s) | / float32 | greedy 64 tokens identical to "
          "float32 (of 4) | decode-step logits against float32: max / mean \\|diff\\| | against float32 "
          "arithmetic on the same quantized weights: max / mean |",
          "|---|---|---|---|---|---|",
          f"| float32 (torch) | {med['float32 decode']:.1f} | 1.00x | - | - | - |"]
    for e in quantized:
        pe = per_engine[e]
        md.append(f"| {e if e.endswith('torch') else e + ' native'} | {med[f'{e} decode']:.1f} | "
                  f"**{pe['decode_ratio']:.2f}x** | {pe['greedy_identical']} | "
                  f"{pe['step_logit_diff_max']:.3f} / {pe['step_logit_diff_mean']:.4f} | "
                  f"{pe['vs_float_math_max']:.4f} / {pe['vs_float_math_mean']:.5f} |")
    md += ["", f"Decode-step logits: 64 steps fed float32's own greedy answer to the first prompt (mean "
           f"|logit| {float(ls.abs().mean()):.2f}). Paths used: "
           + "; ".join(f"{e}: {k}" for e, k in kernels_used.items()) + ".", "",
           "| measure | " + " | ".join(names) + " | " + " | ".join(f"{f} / float32" for f in formats) + " |",
           "|---|" + "---|" * (len(names) + len(formats)),
           "| prefill, 512 tokens (s) | " + " | ".join(f"{med[f'{n} prefill']:.3f}" for n in names)
           + " | " + " | ".join(f"**{per_format[f]['prefill_ratio']:.2f}x** speed" for f in formats) + " |",
           "| perplexity, 1,024 tokens of the CPython reference manual | "
           + " | ".join(f"{ppl[n]:.3f}" for n in names) + " | "
           + " | ".join(f"{per_format[f]['perplexity_ratio']:.4f}x" for f in formats) + " |", ""]
    for f in formats:
        pf = per_format[f]
        md.append(f"- {f}: logits on the first prompt's prefill differ from float32 by at most "
                  f"{pf['logit_diff_max']:.3f}, {pf['logit_diff_mean']:.4f} on average (mean |logit| "
                  f"{result['logit_abs_mean']:.2f}); block weights differ from the file's by at most "
                  f"{pf['weight_error']['max']:.3f} and on average {pf['weight_error']['mean']:.5f} of "
                  f"their mean magnitude.")
    md += ["", "Where greedy text parts from float32, the margin is float32's logit of its own token minus "
           "that of the token the quantized model took: a margin below the mean logit difference is a "
           "near-tie that any perturbation (even a different summation order) may flip.", "",
           "| prompt | float32 | " + " | ".join(quantized) + " |", "|---|" + "---|" * (len(quantized) + 1)]
    for g in greedy:
        cells = []
        for e in quantized:
            same = "identical" if g[e]["identical"] else (
                f"part at token {g[e]['parts_at']} (float32 margin {g[e]['margin']:.3f}): "
                f"{g[e]['text'][:70]!r}")
            cells.append(same)
        md.append(f"| {g['prompt']} | {g['float32'][:70]!r} | " + " | ".join(cells) + " |")
    text = "\n".join(md) + "\n"
    print(text)
    if args.write:
        args.write.write_text(text, encoding="utf-8")
        args.write.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
