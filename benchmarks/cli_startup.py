"""CLI start-up: a new process to `attnlab --help` (and a subcommand's help, an argument error),
median of N runs (issue 16: every help and argument error answers in under 1 s).

    .venv/bin/python benchmarks/cli_startup.py --runs 9
    .venv/bin/python benchmarks/cli_startup.py --runs 9 --src /tmp/old/src --label e5134ee

``--src`` puts another checkout's ``src`` first on PYTHONPATH (same venv, same torch), so an old
commit can be measured next to this one: ``git worktree add /tmp/old e5134ee``. Each run is
``python -c "from attnlab.cli.main import main; main()" ARGS``, what the ``attnlab`` console
script does. Also printed: whether torch was imported by the time each command answered.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CASES = (("attnlab --help", ["--help"]), ("attnlab walk --help", ["walk", "--help"]),
         ("attnlab plot-mask --q-len x (usage error)", ["plot-mask", "--q-len", "x"]))
# Runs the CLI as the console script does, then reports (on stderr, after it answered) the
# source it ran from and whether torch got imported.
RUNNER = ("import atexit, sys\n"
          "atexit.register(lambda: print('@@', __import__('attnlab').__file__, 'torch' in sys.modules,"
          " file=sys.stderr))\n"
          "sys.argv[0] = 'attnlab'\n"
          "from attnlab.cli.main import main\n"
          "main()\n")


def run_once(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    tail = [line for line in res.stderr.splitlines() if line.startswith("@@")]
    return wall, tail[-1][3:] if tail else f"(no report; rc {res.returncode})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--src", help="a checkout's src folder to run instead of the installed attnlab")
    ap.add_argument("--label", default="this tree")
    a = ap.parse_args()
    env = dict(os.environ)
    if a.src:
        env["PYTHONPATH"] = a.src + os.pathsep + env.get("PYTHONPATH", "")
    extra = [("attnlab --version", ["--version"])] if not a.src else []
    print(f"{a.label}: median of {a.runs} new processes; load average before "
          f"{os.getloadavg()[0]:.2f}")
    for name, args in (*CASES, *extra):
        run_once(args, env)  # warm the file cache; not counted
        walls, where = [], ""
        for _ in range(a.runs):
            w, where = run_once(args, env)
            walls.append(w)
        print(f"  {name}: median {statistics.median(walls):.3f} s, min {min(walls):.3f} s, "
              f"max {max(walls):.3f} s  [attnlab from, torch imported: {where}]")
        print(f"    runs: {', '.join(f'{x:.3f}' for x in walls)}")
    print(f"  load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
