"""The int8 and int4 layers' two paths by number of rows (issue 23): torch's weight-only kernel
(bfloat16 activations) against dequantizing the weight and running float32 GEMM, on SmolLM2's
largest projection (gate and up stacked: 3072 x 576), with plain float32 ``F.linear`` beside:

    .venv/bin/python benchmarks/llm/kernel_rows.py --threads 1

Milliseconds per call, best of 5 after a warm-up (one weight, so it stays in cache: a decode
step reading 30 layers' weights favours the kernels more). It chose INT8_ROWS and INT4_ROWS.
"""

from __future__ import annotations

import argparse
import time


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
    print("| rows | float32 | int8 kernel | int8 dequantized | int4 kernel | int4 unpacked |")
    print("|---|---|---|---|---|---|")
    for m in (int(r) for r in args.rows.split(",")):
        x = torch.randn(m, 576)
        cells = [best_ms(lambda: F.linear(x, lin.weight))]
        for layer, module, limit in layers.values():
            saved = getattr(module, limit)
            try:
                for rows in (10**9, 0):  # every call on the kernel, then none
                    setattr(module, limit, rows)
                    cells.append(best_ms(lambda: layer(x)))  # noqa: B023 (called at once)
            finally:
                setattr(module, limit, saved)
        print(f"| {m} | " + " | ".join(f"{c:.3f} ms" for c in cells) + " |")


if __name__ == "__main__":
    main()
