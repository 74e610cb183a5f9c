"""SmolLM2-135M-Instruct: attnlab (float32, int8 and int4 weights) against llama.cpp's ``llama-bench``,
same GGUF file, same threads, alternating runs in one process's session (issue 23, item 5):

    .venv/bin/python benchmarks/llm/vs_llama_cpp.py --rounds 3    # writes RESULTS-llama-cpp.md/.json
    .venv/bin/python benchmarks/llm/vs_llama_cpp.py --quick       # smoke run: short, writes nothing

llama-bench is built on first use from the llama-cpp-python sdist into a cache folder
(``llama_cpp_build.py``); where CMake or a compiler is missing, the llama.cpp column is skipped
and the reason is written in its place. Each round runs, for each thread count, ``llama-bench
-m FILE -p 512 -n 128 -t THREADS -r REPS -o json`` and attnlab's decode (128 new tokens, greedy,
batch 1, KV cache) and prefill (512 tokens) from ``quantized.py``, in an order that reverses
every round. Reported: medians over rounds (llama.cpp: of each round's median repetition), in
tokens/s, and attnlab / llama.cpp. Targets: decode >= 1.0x llama.cpp, prefill >= 2x.

What differs, by construction: llama-bench's tg128 decodes from an empty context and does no
sampling; attnlab's decode starts after a ~40-token chat prompt and takes a greedy argmax each
step. llama-bench's pp512 runs 512 random tokens in one batch (ubatch 512); attnlab's prefill
runs 512 fixed random tokens in one forward pass.
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

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # quantized.py and llama_cpp_build.py sit beside this file
    sys.path.insert(0, str(HERE))

from llama_cpp_build import (  # noqa: E402
    VERSION,
    LlamaCppUnavailable,
    build_info,
    build_llama_bench,
    llama_bench_command,
    run_llama_bench,
)

TARGETS = {"decode": 1.0, "prefill": 2.0}  # attnlab tokens/s over llama.cpp tokens/s, at least
MODES = ("float32", "int8", "int4", "int4-torch")
# int8 and int4 decode through the native kernel (generate_ids' decode_kernel="auto");
# int4-torch is int4 decoded through torch's operators (its prefill is int4's: not run twice)
SETUP = {"float32": ("float32", "auto"), "int8": ("int8", "auto"), "int4": ("int4", "auto"),
         "int4-torch": ("int4", "torch")}
DEFAULT_WRITE = HERE / "RESULTS-llama-cpp.md"


def find_peer(binary: Path | None, cache: Path | None, skip: bool,
              say=lambda m: print(m, file=sys.stderr, flush=True)) -> tuple[Path | None, str | None]:
    """(llama-bench's path, None), or (None, the reason the llama.cpp column is skipped)."""
    if skip:
        return None, "--no-llama-cpp given"
    if binary is not None:
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary, None
        return None, f"--llama-bench: expected an executable file, got {binary}"
    try:
        return build_llama_bench(cache, say=say), None
    except LlamaCppUnavailable as e:
        return None, str(e)


def summarize(samples: dict[str, list[float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Per-thread samples ("llama.cpp decode", "attnlab int8 prefill", ...; tokens/s) ->
    (medians, ratios "float32 decode" -> attnlab / llama.cpp; empty without llama.cpp)."""
    med = {k: statistics.median(v) for k, v in samples.items() if v}
    ratios = {}
    for mode in MODES:
        for measure in TARGETS:
            peer, ours = med.get(f"llama.cpp {measure}"), med.get(f"attnlab {mode} {measure}")
            if peer and ours:
                ratios[f"{mode} {measure}"] = ours / peer
    return med, ratios


def verdicts(per_threads: dict[str, dict], skipped: str | None) -> list[str]:
    """One plain sentence per target, thread count and weights mode."""
    if skipped:
        return [f"No target checked: the llama.cpp column was skipped ({skipped.splitlines()[0]})."]
    out = []
    for t, r in per_threads.items():
        for measure, target in TARGETS.items():
            for mode in MODES:
                ratio = r["ratios"].get(f"{mode} {measure}")
                if ratio is None:
                    continue
                met = "met" if ratio >= target else "NOT met"
                out.append(f"{measure}, {t} thread(s), attnlab {mode}: {ratio:.2f}x llama.cpp "
                           f"(target >= {target:g}x): {met}.")
    return out


def load_note(load: float, cpus: int) -> str:
    """What the 1-minute load average says about the timings (this benchmark wants a quiet machine)."""
    if load > cpus:
        return (f" — more runnable work than the {cpus} CPUs: the timings measure contention with other "
                "processes as much as either engine (multi-thread runs most); rerun on a quiet machine.")
    if load > 0.5:
        return " — other work was running, so these timings are noisy."
    return "."


def modes_of(result: dict) -> list[str]:
    """The weight formats a result measured (older results: float32 and int8)."""
    first = next(iter(result["threads"].values()))["median"]
    return [m for m in MODES if f"attnlab {m} decode" in first]


def render_markdown(result: dict) -> str:
    peer = result["llama_cpp"]
    lb, la = result["load_before"], result["load_after"]
    md = ["# SmolLM2-135M-Instruct (Q4_1 GGUF): attnlab against llama.cpp", "",
          f"Command: `.venv/bin/python {result['command']}`", "",
          f"Machine: {result['machine']}. Load average (1, 5, 15 min) before "
          f"{lb[0]:.2f}, {lb[1]:.2f}, {lb[2]:.2f}; after {la[0]:.2f}, {la[1]:.2f}, {la[2]:.2f}"
          + load_note(max(lb[0], la[0]), result.get("cpus") or os.cpu_count() or 1), ""]
    if peer["skipped"]:
        md += [f"llama.cpp: **skipped** — {peer['skipped']}", ""]
    else:
        md += [f"llama.cpp: `llama-bench` (build commit {peer['build_commit']}, from the llama-cpp-python "
               f"{peer['version']} sdist, {peer['cmake_options']}; built in {peer['build_s']} s), each round "
               f"`{peer['command']}`.", ""]
    md += [f"Medians of {result['rounds']} alternating rounds, tokens/s (decode: {result['n_gen']} new "
           f"tokens, batch 1; prefill: {result['n_prompt']} tokens):", "",
           "| threads | measure | llama.cpp | "
           + " | ".join(f"attnlab {m} | {m} / llama.cpp" for m in modes_of(result)) + " | target |",
           "|---|---|---|" + "---|---|" * len(modes_of(result)) + "---|"]
    for t, r in result["threads"].items():
        med, ratios = r["median"], r["ratios"]
        for measure, target in TARGETS.items():
            peer_v = med.get(f"llama.cpp {measure}")
            cells = [f"{peer_v:.1f}" if peer_v else "skipped"]
            for mode in modes_of(result):
                ours = med.get(f"attnlab {mode} {measure}")
                cells.append("—" if ours is None else f"{ours:.1f}")
                ratio = ratios.get(f"{mode} {measure}")
                cells.append(f"**{ratio:.2f}x**" if ratio is not None else "—")
            md.append(f"| {t} | {measure} | " + " | ".join(cells) + f" | >= {target:g}x |")
    md += ["", "Targets:", ""] + [f"- {v}" for v in result["verdicts"]]
    md += ["", "What differs by construction: llama-bench's tg decodes from an empty context and does no "
           "sampling; attnlab's decode starts after a ~40-token chat prompt and takes a greedy argmax each "
           "step. llama-bench's pp runs random tokens in one batch; attnlab's prefill one forward pass over "
           "fixed random tokens. Both read the same GGUF; llama.cpp computes on its Q4_1 blocks, attnlab on "
           "float32 weights dequantized from them, int8 rows requantized from those, or int4 groups of 32 "
           "that hold the Q4_1 blocks again (scales rounded to bfloat16). attnlab int8 and int4 decode "
           "through its native kernel (one call per token, 16-bit activations; "
           "`attnlab.models.fast_decode`), int4-torch through torch's operators and int4 kernel "
           "(bfloat16 activations); llama.cpp rounds activations to 8 bits (its q8 blocks)."]
    return "\n".join(md) + "\n"


def measure(args: argparse.Namespace, peer: Path | None, model_file: Path, threads: list[int]) -> dict:
    """Alternating rounds for each thread count -> {"1": {"samples", "median", "ratios"}, ...}."""
    import torch
    from quantized import decode_tokens_per_s, prefill_ids, prefill_s
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from attnlab.models import load_model

    loaded = {w: load_model("smollm2", weights=w) for w in dict.fromkeys(w for w, _ in SETUP.values())}
    models = {mode: loaded[SETUP[mode][0]] for mode in MODES}
    ids = prefill_ids(args.n_prompt)
    engines = ["llama.cpp", *MODES] if peer is not None else list(MODES)
    per_threads: dict[str, dict] = {}
    steps = len(threads) * (args.rounds * len(engines) + len(MODES))
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("starting", total=steps)

        def step(text: str) -> None:
            bar.update(task, description=text)
            if not console.is_terminal:  # a log file (nohup): no live bar, so one line per step
                console.print(f"{time.strftime('%H:%M:%S')} {text} (load {os.getloadavg()[0]:.2f})")

        for t in threads:
            torch.set_num_threads(t)
            names = ["llama.cpp", *(f"attnlab {x}" for x in MODES)]
            samples: dict[str, list[float]] = {f"{e} {m}": [] for e in names for m in TARGETS}
            raw: list[dict] = []
            for mode, lm in models.items():  # warm-up at this thread count (llama-bench warms up itself)
                step(f"{t} thread(s): warm-up attnlab {mode}")
                decode_tokens_per_s(lm, args.n_gen, kernel=SETUP[mode][1]), prefill_s(lm, ids)
                bar.advance(task)
            for r in range(args.rounds):
                order = engines if r % 2 == 0 else engines[::-1]
                for e in order:
                    step(f"{t} thread(s), round {r + 1}/{args.rounds}: {e}")
                    if e == "llama.cpp":
                        assert peer is not None
                        tests = run_llama_bench(peer, model_file, t, args.n_prompt, args.n_gen, args.reps)
                        pp, tg = tests[f"pp{args.n_prompt}"], tests[f"tg{args.n_gen}"]
                        samples["llama.cpp decode"].append(tg.median_ts)
                        samples["llama.cpp prefill"].append(pp.median_ts)
                        raw.append({"round": r, "pp_samples_ts": pp.samples_ts,
                                    "tg_samples_ts": tg.samples_ts, "n_threads": tg.n_threads,
                                    "build_commit": tg.build_commit, "cpu_info": tg.cpu_info,
                                    "model_type": tg.model_type})
                    else:
                        lm, kernel = models[e], SETUP[e][1]
                        tps = decode_tokens_per_s(lm, args.n_gen, kernel=kernel)
                        samples[f"attnlab {e} decode"].append(tps)
                        if kernel == "auto":  # the decode path changes nothing in a prefill
                            samples[f"attnlab {e} prefill"].append(args.n_prompt / prefill_s(lm, ids))
                    bar.advance(task)
            med, ratios = summarize(samples)
            per_threads[str(t)] = {"samples": samples, "median": med, "ratios": ratios,
                                   "llama_bench_raw": raw, "load_after": list(os.getloadavg())}
    return per_threads


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per thread count")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--reps", type=int, default=3, help="llama-bench -r: repetitions in each round")
    ap.add_argument("--n-gen", type=int, default=128, help="decode: new tokens (llama-bench -n)")
    ap.add_argument("--n-prompt", type=int, default=512, help="prefill: tokens (llama-bench -p)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 round, 1 repetition, -n 16 -p 64, 1 thread; writes only with --write")
    ap.add_argument("--write", type=Path, default=None,
                    help="markdown result, a .json beside it (default benchmarks/llm/RESULTS-llama-cpp.md)")
    ap.add_argument("--no-write", action="store_true", help="write no result files")
    ap.add_argument("--json", action="store_true", help="print the JSON result instead of the markdown")
    ap.add_argument("--llama-bench", type=Path, default=None, help="use this llama-bench instead of building")
    ap.add_argument("--cache", type=Path, default=None, help="llama.cpp build cache (llama_cpp_build.py)")
    ap.add_argument("--no-llama-cpp", action="store_true", help="skip the llama.cpp column")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.reps, args.n_gen, args.n_prompt = 1, 1, 16, 64
        if args.threads == ap.get_default("threads"):
            args.threads = "1"
    try:
        threads = [int(x) for x in args.threads.split(",")]
    except ValueError:
        ap.error(f"--threads: expected comma-separated integers, got {args.threads!r}")
    if args.rounds < 1 or args.reps < 1 or min(threads) < 1:
        ap.error(f"--rounds, --reps, --threads: expected positive, got {args.rounds}, {args.reps}, {threads}")
    write = None if args.no_write else (args.write or (None if args.quick else DEFAULT_WRITE))

    load_before = os.getloadavg()
    peer, skipped = find_peer(args.llama_bench, args.cache, args.no_llama_cpp)
    from attnlab.models.gguf_file import embedded_llm_path

    model_file = embedded_llm_path()
    per_threads = measure(args, peer, model_file, threads)
    load_after = os.getloadavg()

    import torch

    import attnlab

    raw = next((r["llama_bench_raw"][0] for r in per_threads.values() if r["llama_bench_raw"]), {})
    info = build_info(args.cache) if peer is not None and args.llama_bench is None else {}
    argv_shown = " ".join(sys.argv[1:] if argv is None else argv)
    result = {
        "command": f"benchmarks/llm/vs_llama_cpp.py {argv_shown}".strip(),
        "machine": f"{os.cpu_count()} CPUs ({raw.get('cpu_info') or platform.processor() or 'cpu'}), python "
                   f"{platform.python_version()}, attnlab {attnlab.__version__}, torch {torch.__version__}",
        "cpus": os.cpu_count(), "load_before": list(load_before), "load_after": list(load_after),
        "model_file": str(model_file), "rounds": args.rounds, "reps": args.reps,
        "n_gen": args.n_gen, "n_prompt": args.n_prompt,
        "llama_cpp": {
            "skipped": skipped, "binary": str(peer) if peer else None, "version": VERSION,
            "build_commit": raw.get("build_commit"), "build_s": info.get("build_s"),
            "cmake_options": " ".join(info.get("cmake_options", [])) or None,
            "command": " ".join(llama_bench_command(Path("llama-bench"), Path(model_file.name), threads[0],
                                                    args.n_prompt, args.n_gen, args.reps))
                       .replace(f"-t {threads[0]}", "-t THREADS"),
        },
        "threads": per_threads,
    }
    result["verdicts"] = verdicts(per_threads, skipped)
    text = render_markdown(result)
    print(json.dumps(result, indent=1) if args.json else text)
    if write:
        write.write_text(text, encoding="utf-8")
        write.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {write} and {write.with_suffix('.json').name}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
