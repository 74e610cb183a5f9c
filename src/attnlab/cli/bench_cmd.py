"""``attnlab bench``: time attention kernels against their peers, write CSV / JSON / PNG / markdown."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from attnlab.cli.common import (
    ThreadsOpt,
    check_output,
    err_console,
    print_json,
    split_tokens,
    use_threads,
    user_errors,
)


def bench_command(
    quick: Annotated[bool, typer.Option("--quick", help="smoke run in seconds (n=256, no compile)")] = False,
    suite: Annotated[str, typer.Option(help="standard | targets | patterns | gemma3 | quick")] = "standard",
    cases: Annotated[list[str] | None, typer.Option("--cases", help="case names, comma- and/or "
                                                    "space-separated")] = None,
    n: Annotated[list[str] | None, typer.Option("--n", help="lengths, e.g. 1k,16k,1m")] = None,
    modes: Annotated[list[str] | None, typer.Option("--modes", help="fwd and/or fwd+bwd")] = None,
    peers: Annotated[list[str] | None, typer.Option("--peers", help="tiled, sdpa, flex, eager")] = None,
    out: Annotated[Path, typer.Option("--out", help="folder for bench.csv/json/png/md")] = Path("bench-out"),
    threads: ThreadsOpt = None,
    repeats: Annotated[int | None, typer.Option(help="timed calls per measurement (median)")] = None,
    max_seconds: Annotated[float | None, typer.Option(help="skip peers estimated slower per call")] = None,
    max_gb: Annotated[float, typer.Option(help="skip peers estimated to need more memory")] = 6.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON")] = False,
) -> None:
    """Benchmark tiled attention against eager, torch SDPA and compiled FlexAttention."""

    from attnlab.bench import harness, report
    from attnlab.bench.cases import CASES, parse_n
    from attnlab.bench.machine import machine_info, matmul_peak
    from attnlab.bench.peers import Limits
    from attnlab.bench.suites import make_suite

    names = {"suite": "--suite", "cases": "--cases", "n": "--n", "modes": "--modes", "peers": "--peers"}
    with user_errors(as_json, names):  # make_suite / parse_n name their parameters, not the options
        check_output(out, "--out")
        use_threads(threads)
        ns = None if not n else [_length(parse_n, x) for x in split_tokens(n) or []]
        s = make_suite("quick" if quick else suite, cases=split_tokens(cases), ns=ns,
                       modes=split_tokens(modes), peers=split_tokens(peers))
        out.mkdir(parents=True, exist_ok=True)
        info = machine_info()
        peak = matmul_peak(1024 if quick else 4096, repeats=3 if quick else 7)
        lim = Limits(max_seconds=max_seconds or s.max_seconds, max_bytes=max_gb * 1e9, peak_gflops=peak)
        if not as_json:
            err_console.print(f"[bold]{s.name}[/] ({s.shape.title}): {len(s.specs)} measurements on "
                              f"{info['cpu']} "
                              f"({info['torch_threads']} threads, load {info['load_average']}), "
                              f"matmul peak {peak:.0f} GFLOP/s")

        done: list[harness.Row] = []

        def progress(r: harness.Row) -> None:
            done.append(r)
            report.write_csv(done, out / "bench.csv")  # partial results survive an interruption
            if as_json:
                return
            val = (f"{r.seconds * 1e3:9.1f} ms {r.gflops:7.1f} GFLOP/s {r.pct_peak:5.1f}%"
                   if r.seconds else r.note)
            err_console.print(f"  {r.case:20s} {r.n:>8d} {r.mode:8s} {r.peer:6s} {val}", highlight=False)

        t0 = time.perf_counter()
        rows = harness.run(s.specs, lim, repeats=repeats or s.repeats, progress=progress, shape=s.shape)
        # The peak is re-measured at the end and the better of the two used: on a shared machine
        # a load burst during one measurement must not make "% of peak" exceed 100.
        peak_end = matmul_peak(1024 if quick else 4096, repeats=3 if quick else 7)
        peak = max(peak, peak_end)
        for r in rows:
            if r.gflops is not None:
                r.pct_peak = 100.0 * r.gflops / peak
        meta = {"suite": s.name, "shape": s.shape.title, "command": _command(), "machine": info,
                "matmul_peak_gflops": peak, "matmul_peak_start_end": [lim.peak_gflops, peak_end],
                "wall_s": time.perf_counter() - t0,
                "load_average_after": machine_info()["load_average"],
                "cases": {c: CASES[c].title for c in {r.case for r in rows}}}
        tg = report.targets(rows, s.shape.name)
        md, plotted = report.write_all(rows, {**meta, "targets": tg}, out)
    if as_json:
        print_json({**meta, "targets": tg, "rows": [r.as_dict() for r in rows],
                    "files": sorted(p.name for p in out.iterdir() if p.name.startswith("bench."))})
        return
    sys.stdout.write(md)
    err_console.print(f"wrote {out}/bench.csv, bench.json, bench.md" + (", bench.png" if plotted else ""))


def _length(parse_n: Callable[[str], int], text: str) -> int:
    try:
        return parse_n(text)
    except ValueError:  # float('1q') says only "could not convert string to float"
        raise ValueError(f"--n: expected a positive length like 4096, 16k or 1m, got {text!r}") from None


def _command() -> str:
    """The command line as run, with the environment that changes timings in front."""
    env = " ".join(f"{k}={os.environ[k]}" for k in ("GLIBC_TUNABLES", "OMP_NUM_THREADS") if k in os.environ)
    return (env + " " if env else "") + "attnlab " + " ".join(sys.argv[1:])


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)
