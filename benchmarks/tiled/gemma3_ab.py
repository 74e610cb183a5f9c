"""Paired timing of the tiled backend at Gemma 3's local-layer shape, against compiled
FlexAttention in the same process (issue 23, item 4).

    python benchmarks/tiled/gemma3_ab.py CHECKOUT/src N [--flex] [--threads T] [--reps R]

B=1, 4 query heads on 1 K/V head, Dh=256, fp32, causal window of 512 keys + self (the bench's
``sliding_window_512`` on ``--suite gemma3``). Prints one JSON line: median wall and process CPU
time (ms) of R forward calls after two warm-ups, tiled and (``--flex``) FlexAttention taking
turns call by call, the median of the per-call tiled/flex ratios, % of the fp32 matmul peak
(best 2048³ matmul, measured between the calls) and the load average. Run it for the old and
the new checkout in alternation, several rounds, and compare the rounds pair by pair: on a
shared machine only paired ratios mean anything.
"""
import argparse
import json
import os
import statistics
import sys
import time
import warnings

ap = argparse.ArgumentParser()
ap.add_argument("src")
ap.add_argument("n", type=int)
ap.add_argument("--flex", action="store_true")
ap.add_argument("--threads", type=int, default=None)
ap.add_argument("--reps", type=int, default=9)
a = ap.parse_args()
sys.path.insert(0, a.src)
import torch  # noqa: E402

if a.threads:
    torch.set_num_threads(a.threads)
import attnlab  # noqa: E402
from attnlab import masks  # noqa: E402
from attnlab.bench.machine import matmul_peak  # noqa: E402

warnings.simplefilter("ignore")
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(1, h, a.n, 256, generator=g) for h in (4, 1, 1))  # (B, H|Hkv, n, Dh)
m = masks.sliding_window(512, 0)
fns = {"tiled": lambda: attnlab.attention(q, k, v, mask=m, backend="tiled").context}
if a.flex:
    from torch.nn.attention.flex_attention import create_block_mask

    from attnlab.bench.cases import CASES
    from attnlab.bench.peers import _compiled_flex

    bm = create_block_mask(CASES["sliding_window_512"].flex_mod(a.n), None, None, a.n, a.n, device="cpu",
                           _compile=True)
    fx = _compiled_flex()
    fns["flex"] = lambda: fx(q, k, v, block_mask=bm, enable_gqa=True)
times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in fns}
peaks = []
with torch.no_grad():
    for f in fns.values():
        f()
        f()
    order = list(fns.items())
    for r in range(a.reps):
        for name, f in order if r % 2 == 0 else order[::-1]:
            t, c = time.perf_counter(), time.process_time()
            f()
            times[name][0].append(time.perf_counter() - t)
            times[name][1].append(time.process_time() - c)
        if r % 3 == 0:
            peaks.append(matmul_peak(2048, 3))
md = statistics.median
pairs = sum(min(i, 512) + 1 for i in range(a.n))
flop = 4 * 256 * pairs * 4  # useful FLOPs: 4·Dh per allowed (q, kv) pair, 4 heads
res: dict[str, object] = {"src": a.src, "n": a.n, "threads": torch.get_num_threads(),
                          "load": round(os.getloadavg()[0], 2), "peak_gflops": round(max(peaks), 1)}
for name, (wall, cpu) in times.items():
    res[name] = {"wall_ms": round(md(wall) * 1e3, 1), "cpu_ms": round(md(cpu) * 1e3, 1),
                 "pct_peak": round(100 * flop / md(wall) / 1e9 / max(peaks), 1)}
if a.flex:
    ratios = [x / y for x, y in zip(times["tiled"][0], times["flex"][0], strict=True)]
    res["tiled/flex"] = round(md(ratios), 3)
print(json.dumps(res))
