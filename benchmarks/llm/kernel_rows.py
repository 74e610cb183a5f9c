"""The int8 and int4 layers' two paths by number of rows (issue 23): torch's weight-only kernel
(bfloat16 activations) against dequantizing the weight and running float32 GEMM, on SmolLM2's
largest projection (gate and up stacked: 3072 x 576), with plain float32 ``F.linear`` beside:

    .venv/bin/python benchmarks/llm/kernel_rows.py --threads 1 --write benchmarks/llm/kernel-rows-1t.md

Milliseconds per call, best of 5 after a warm-up (one weight, so it stays in cache: a decode
step reading 30 layers' weights favours the kernels more). It chose INT8_ROWS and INT4_ROWS.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def best_ms(f, n: int = 5) -> float:
    f()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", default="1,4,16,64,256", help="comma-separated row counts")
    ap.add_argument("--write", type=Path, default=None, help="markdown result")
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F

    from attnlab.models import quantized, quantized_int4
    from attnlab.models.quantized import Int8Linear
    from attnlab.models.quantized_int4 import Int4Linear

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lin = torch.nn.Linear(576, 3072, bias=False).requires_grad_(False)
    layers = {"int8": (Int8Linear.from_linear(lin), quantized, "INT8_ROWS"),
              "int4": (Int4Linear.from_linear(lin), quantized_int4, "INT4_ROWS")}
    lines = [f"# int8 / int4 layers: kernel against dequantized float32 GEMM, by rows "
             f"({args.threads} thread(s))", "",
             f"Command: `.venv/bin/python benchmarks/llm/kernel_rows.py {' '.join(sys.argv[1:])}`", "",
             f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
             f"a 3072 x 576 weight, milliseconds per call, best of 5. INT8_ROWS = {quantized.INT8_ROWS}, "
             f"INT4_ROWS = {quantized_int4.INT4_ROWS}.", "",
             "| rows | float32 | int8 kernel | int8 dequantized | int4 kernel | int4 unpacked |",
             "|---|---|---|---|---|---|"]
    for m in (int(r) for r in args.rows.split(",")):
        x = torch.randn(m, 576)
        cells = [best_ms(lambda: F.linear(x, lin.weight))]  # noqa: B023 (called at once)
        for layer, module, limit in layers.values():
            saved = getattr(module, limit)
            try:
                for rows in (10**9, 0):  # every call on the kernel, then none
                    setattr(module, limit, rows)
                    cells.append(best_ms(lambda: layer(x)))  # noqa: B023 (called at once)
            finally:
                setattr(module, limit, saved)
        lines.append(f"| {m} | " + " | ".join(f"{c:.3f} ms" for c in cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        args.write.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
