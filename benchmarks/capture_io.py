"""Save + load of a full generation capture: SmolLM2's 30 layers x 9 heads over 1,000 positions.

    .venv/bin/python benchmarks/capture_io.py --positions 1000 --runs 5

The capture is synthetic (random rows in fp16, the recorder's dtype): file size and speed
depend only on the shape. Prints the medians of save and load, the file size, and whether the
loaded tensor equals the saved one bit for bit. Target: save + load < 2 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from attnlab.inspect.llm.capture_file import Capture


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--positions", type=int, default=1000)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    n = a.positions
    g = torch.Generator().manual_seed(0)
    w = torch.rand(a.layers, a.heads, n * (n + 1) // 2, generator=g).half()  # (L, H, N(N+1)/2)
    cap = Capture(w, [f"t{i}" for i in range(n + 1)], 20, "SmolLM2-135M-Instruct", "synthetic",
                  list(range(a.layers)), list(range(a.heads)), [h // 3 for h in range(a.heads)], "bench")
    saves, loads = [], []
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "cap.safetensors"
        for _ in range(a.runs):
            t = time.perf_counter()
            cap.save(path)
            saves.append(time.perf_counter() - t)
            t = time.perf_counter()
            back = Capture.load(path, model="smollm2")
            loads.append(time.perf_counter() - t)
            assert torch.equal(back.weights, w), "round trip is not bit-exact"
        size = path.stat().st_size
    s, lo = statistics.median(saves), statistics.median(loads)
    print(f"{a.layers} layers x {a.heads} heads x {n} positions: {size / 1e6:.1f} MB, "
          f"save {s:.3f} s, load {lo:.3f} s, save + load {s + lo:.3f} s (medians of {a.runs}), "
          f"bit-exact: yes; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
