"""Is the default thread count (the cores this process may use) ever slower than --threads 1?

    .venv/bin/python benchmarks/threads/threads_default.py --rounds 7 [--busy 1]

Three workloads, each the compute of a command: `inspect` (all-MiniLM-L6-v2 over the tutorial
sentence, weights kept), `generate` (SmolLM2-135M-Instruct, 24 greedy tokens with every head's
attention captured) and the tiled backend (`bench`: causal attention, 1 x 8 x 2048 x 64). Each
round runs every workload once at 1 thread and once at the default, in alternating order (so a
change of load hits both alike); the table gives medians and the ratio default / 1 thread
(below 1.10 is the target). ``--busy N`` starts N processes that spin on one core each during
the measurement (a machine shared with other jobs). The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from attnlab.threads import available_cores, default_threads, set_threads

SENT = "The animal didn't cross the street because it was too tired"


def workloads() -> dict[str, Callable[[], object]]:
    import attnlab
    from attnlab import masks
    from attnlab.inspect import capture
    from attnlab.inspect.llm.generation import generate_text
    from attnlab.models import load_model

    enc = load_model()
    llm = load_model("smollm2")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 8, 2048, 64, generator=g) for _ in range(3))
    causal = masks.causal()
    return {
        "inspect (MiniLM, 15 tokens)": lambda: capture(enc, SENT),
        "generate (SmolLM2, 24 tokens, capture)": lambda: generate_text(
            llm, "What is attention?", max_new_tokens=24, capture=True),
        "tiled attention (1x8x2048x64, causal)": lambda: attnlab.attention(
            q, k, v, mask=causal, backend="tiled"),
    }


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    with torch.no_grad():
        fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--busy", type=int, default=0, help="spinning processes during the run")
    a = ap.parse_args()
    default = default_threads()
    load_before = os.getloadavg()
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.busy)]
    try:
        work = workloads()
        for fn in work.values():  # warm-up at both settings
            for n in (1, default):
                set_threads(n)
                timed(fn)
        times: dict[str, dict[int, list[float]]] = {w: {1: [], default: []} for w in work}
        for r in range(a.rounds):
            order = (1, default) if r % 2 == 0 else (default, 1)
            for name, fn in work.items():
                for n in order:
                    set_threads(n)
                    times[name][n].append(timed(fn))
    finally:
        for p in spinners:
            p.kill()
    rows = []
    for name, by in times.items():
        one, dflt = statistics.median(by[1]), statistics.median(by[default])
        rows.append({"workload": name, "threads_1_s": round(one, 4), f"threads_{default}_s": round(dflt, 4),
                     "ratio_default_over_1": round(dflt / one, 3)})
    print(json.dumps({"cores_available": available_cores(), "default_threads": default,
                      "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "busy_spinners": a.busy,
                      "rounds": a.rounds, "load_average_before": load_before,
                      "load_average_after": os.getloadavg(), "torch": torch.__version__,
                      "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
