"""Where a SmolLM2-135M-Instruct decode step's time goes (issue 23): torch.profiler over greedy
decode steps after a chat prompt, the operators' own CPU time grouped by what they do.

    .venv/bin/python benchmarks/llm/decode_profile.py --weights int4 --threads 1 \
        --write benchmarks/llm/decode-profile-int4-1t.md

Reported per token: the step's wall time without the profiler (median of ``--steps`` steps), and
under it the operators' self time by group — weight matmuls (torch's int8/int4 kernels, mm,
addmm), attention (SDPA), the rest of the operators (norms, RoPE, the cache write, casts, adds) —
and what no operator accounts for (Python, module calls, dispatch), estimated as the step without
the profiler minus the operators' time. Also the number of operator calls per layer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

WEIGHTS = ("aten::_weight_int4pack_mm_for_cpu", "aten::_weight_int8pack_mm", "aten::mm", "aten::addmm",
           "aten::bmm")
ATTENTION = ("aten::_scaled_dot_product_flash_attention_for_cpu",)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", choices=("float32", "int8", "int4"), default="int4")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--write", type=Path, default=None, help="markdown result (a .json beside it)")
    args = ap.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile

    from attnlab.inspect.llm.generation import render_prompt
    from attnlab.models import load_model

    torch.set_num_threads(args.threads)
    lm = load_model("smollm2", weights=args.weights)
    m = lm.model
    ids = torch.tensor([lm.encode(render_prompt(lm, "Write a haiku about the sea.")).ids])
    walls: list[float] = []
    with torch.inference_mode():
        cache = m.new_cache()
        logits = m(ids, cache=cache, logits_to_keep=1).logits
        for i in range(16 + args.steps):  # 16 warm-up steps
            t0 = time.perf_counter()
            logits = m(logits[0, -1].argmax().view(1, 1), cache=cache, logits_to_keep=1).logits
            if i >= 16:
                walls.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                logits = m(logits[0, -1].argmax().view(1, 1), cache=cache, logits_to_keep=1).logits
        profiled = (time.perf_counter() - t0) / args.steps
    groups = {"weight matmuls": 0.0, "attention (SDPA)": 0.0, "other operators": 0.0}
    calls = 0
    for e in prof.key_averages():
        if not e.key.startswith("aten::"):
            continue
        calls += e.count
        us = e.self_cpu_time_total
        group = ("weight matmuls" if e.key in WEIGHTS else "attention (SDPA)" if e.key in ATTENTION
                 else "other operators")
        groups[group] += us / 1e3 / args.steps  # ms per token
    ops_ms = sum(groups.values())
    # The profiler's own bookkeeping runs outside the operators and roughly triples a step: the
    # rest is estimated from the step without it.
    wall = statistics.median(walls) * 1e3
    groups["outside the operators (Python, module calls, dispatch): the step without the profiler "
           "minus the above"] = max(wall - ops_ms, 0.0)
    layers = len(m.layers)
    result = {
        "command": f"benchmarks/llm/decode_profile.py --weights {args.weights} --threads {args.threads}"
                   + (f" --write {args.write}" if args.write else ""),
        "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}",
        "wall_ms_per_token": wall, "profiled_ms_per_token": profiled * 1e3,
        "groups_ms_per_token": groups, "operator_calls_per_layer": calls / args.steps / layers,
    }
    md = [f"# Where a decode step's time goes: SmolLM2-135M-Instruct, {args.weights}, "
          f"{args.threads} thread(s)",
          "", f"Command: `.venv/bin/python {result['command']}`", "", f"Machine: {result['machine']}.", "",
          f"Decode step without the profiler: **{result['wall_ms_per_token']:.1f} ms** per token (median of "
          f"{args.steps} steps after a chat prompt); under torch.profiler {profiled * 1e3:.1f} ms, split "
          "by the operators' own CPU time:", "", "| group | ms per token |", "|---|---|"]
    md += [f"| {k} | {v:.1f} |" for k, v in groups.items()]
    md += ["", f"Operator calls per layer and token: {result['operator_calls_per_layer']:.0f} "
           "(aten operators, nested ones included)."]
    text = "\n".join(md) + "\n"
    print(text)
    if args.write:
        args.write.write_text(text, encoding="utf-8")
        args.write.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
