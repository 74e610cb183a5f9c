"""What machine a benchmark ran on, and its measured fp32 matmul peak.

Speed targets are stated as ratios to peers measured in the same run and as a fraction of
this machine's own measured peak (a large torch.matmul), never as absolute numbers.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

import torch


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    info = {}
    for line in out.splitlines():
        key, _, val = line.partition(":")
        info[key.strip()] = val.strip()
    return info


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def machine_info() -> dict[str, object]:
    """CPU model, cores, threads, versions and the current load (other processes skew timings)."""
    ls = _lscpu()
    model = ls.get("Model name") or platform.processor() or "unknown"
    flags = ls.get("Flags", "")
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags.split()]
    return {
        "cpu": model,
        "vendor": ls.get("Vendor ID", ""),
        "cores": os.cpu_count(),
        "sockets": ls.get("Socket(s)", ""),
        "l3": ls.get("L3 cache", ""),
        "isa": isa,
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average": load_average(),
        # Allocator settings change timings a lot on VMs with slow page faults (docs/efficient.md).
        "env": {k: os.environ[k] for k in ("GLIBC_TUNABLES", "OMP_NUM_THREADS", "MALLOC_CONF")
                if k in os.environ},
    }


def matmul_peak(n: int = 4096, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Best-of-``repeats`` GFLOP/s of one n x n x n torch.matmul (2n³ FLOPs): the reference for
    "% of peak". Best, not median: the peak is what the machine can do when nothing interferes."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g, dtype=dtype)
    b = torch.randn(n, n, generator=g, dtype=dtype)
    c = torch.empty(n, n, dtype=dtype)
    torch.matmul(a, b, out=c)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9
