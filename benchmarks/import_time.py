"""What `import attnlab` adds to `import torch`, median of N fresh processes (issue 15's target:
at most 0.3 s). Also whether `import attnlab.viz` loads torch (it must not).

    .venv/bin/python benchmarks/import_time.py --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

CODE = ("import time; t = time.perf_counter(); import torch; t1 = time.perf_counter(); import attnlab; "
        "attnlab.attention; t2 = time.perf_counter(); print(t1 - t, t2 - t1)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    n = ap.parse_args().runs
    torch_s, extra_s = [], []
    for _ in range(n):
        a, b = map(float, subprocess.run([sys.executable, "-c", CODE], check=True, capture_output=True,
                                         text=True).stdout.split())
        torch_s.append(a)
        extra_s.append(b)
    viz = subprocess.run([sys.executable, "-c", "import sys, attnlab.viz; print('torch' in sys.modules)"],
                         check=True, capture_output=True, text=True).stdout.strip()
    print(f"import torch: median {statistics.median(torch_s):.3f} s; import attnlab (+ attnlab.attention) "
          f"adds median {statistics.median(extra_s):.3f} s (runs: {', '.join(f'{x:.3f}' for x in extra_s)}); "
          f"import attnlab.viz loads torch: {viz}")


if __name__ == "__main__":
    main()
