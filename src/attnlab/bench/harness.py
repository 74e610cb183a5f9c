"""Run (case, n, mode, peer) measurements: median time, useful GFLOP/s, % of peak, peak RSS.

Every peer sees the same inputs (seeded, fp32, of a ``cases.Shape``: by default B=1, H=8,
Dh=64). The first call is a warm-up (for FlexAttention it also compiles; that time is reported
as compile time, not timed); then ``repeats`` timed calls, median reported. Calls slower than
``long_call`` seconds are timed once. Peak memory is the largest RSS increase over the timed
calls (see memory.py).
"""

from __future__ import annotations

import gc
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from attnlab.backends.tiled import computed_pairs
from attnlab.bench.cases import CASES, STANDARD, Shape, nnz, useful_flops
from attnlab.bench.memory import peak_rss
from attnlab.bench.peers import Limits, Prepared, prepare


@dataclass
class Row:
    case: str
    n: int
    mode: str  # "fwd" or "fwd+bwd"
    peer: str
    status: str  # "ok", "skipped", "error"
    seconds: float | None = None  # median of the timed calls
    runs: int = 0
    useful_gflop: float = 0.0
    gflops: float | None = None  # useful GFLOP / seconds
    pct_peak: float | None = None  # of the measured fp32 matmul peak
    peak_mem_mb: float | None = None
    mem_method: str = ""
    setup_s: float | None = None  # block mask / dense mask build, excluded
    compile_s: float | None = None  # first call minus a timed call (FlexAttention)
    useful_pct: float | None = None  # tiled: allowed pairs / pairs its touched tiles compute, %
    note: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def inputs(n: int, mode: str, seed: int = 0,
           shape: Shape = STANDARD) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, hq, hkv, dh = shape.b, shape.hq, shape.hkv, shape.dh
    q, k, v = (torch.randn(b, h, n, dh, generator=g) for h in (hq, hkv, hkv))  # (B, H, n, Dh)
    do = torch.randn(b, hq, n, dh, generator=g) if mode == "fwd+bwd" else torch.empty(0)
    if mode == "fwd+bwd":
        for t in (q, k, v):
            t.requires_grad_(True)
    return q, k, v, do


def _one_call(p: Prepared, mode: str, q: Tensor, k: Tensor, v: Tensor, do: Tensor) -> None:
    assert p.fn is not None
    if mode == "fwd":
        with torch.no_grad():
            p.fn()
        return
    for t in (q, k, v):
        t.grad = None
    p.fn().backward(do)


def measure(p: Prepared, mode: str, q: Tensor, k: Tensor, v: Tensor, do: Tensor, *, repeats: int,
            long_call: float, peer: str) -> tuple[list[float], float, int, str]:
    """(timed seconds, first-call seconds, peak bytes, memory method)."""
    t = time.perf_counter()
    _one_call(p, mode, q, k, v, do)
    first = time.perf_counter() - t
    times, peak, method = [], 0, ""
    if first > long_call and peer != "flex":
        # One more run would double a long benchmark; the warm-up is representative here.
        with peak_rss() as m:
            t = time.perf_counter()
            _one_call(p, mode, q, k, v, do)
            times.append(time.perf_counter() - t)
        return times, first, m.bytes, m.method
    for _ in range(max(1, repeats)):
        with peak_rss() as m:
            t = time.perf_counter()
            _one_call(p, mode, q, k, v, do)
            times.append(time.perf_counter() - t)
        peak, method = max(peak, m.bytes), m.method
    return times, first, peak, method


def run_one(case_name: str, n: int, mode: str, peer: str, qkvd: tuple[Tensor, ...], lim: Limits, *,
            repeats: int, long_call: float, shape: Shape = STANDARD) -> Row:
    case = CASES[case_name]
    flops = useful_flops(case, n, mode, shape)
    row = Row(case_name, n, mode, peer, "ok", useful_gflop=flops / 1e9)
    q, k, v, do = qkvd
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = prepare(peer, case, n, mode, q, k, v, lim, shape)
            row.note, row.setup_s = p.note, round(p.setup_s, 3) if p.setup_s else None
            if p.fn is None:
                row.status = "skipped"
                return row
            times, first, mem, method = measure(p, mode, q, k, v, do, repeats=repeats,
                                                long_call=long_call, peer=peer)
    except (RuntimeError, ValueError, NotImplementedError, MemoryError) as e:
        row.status, row.note = "error", f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        return row
    times.sort()
    med = times[len(times) // 2]
    row.seconds, row.runs = med, len(times)
    row.gflops = flops / med / 1e9
    row.pct_peak = 100.0 * row.gflops / lim.peak_gflops
    row.peak_mem_mb, row.mem_method = mem / 2**20, method
    if peer == "flex":
        row.compile_s = round(max(0.0, first - med), 3)
    if peer == "tiled":
        packed = shape.hq // shape.hkv  # GQA: the query heads on one K/V head share (taller) tiles
        computed = computed_pairs(case.make(n), n, n, packed_heads=packed)
        row.useful_pct = round(100.0 * nnz(case, n) / computed, 1)
    return row


def run(specs: Iterable[tuple[str, int, str, str]], lim: Limits, *, repeats: int = 3,
        long_call: float = 20.0, progress: Callable[[Row], None] | None = None,
        shape: Shape = STANDARD) -> list[Row]:
    """Measure every (case, n, mode, peer) spec; inputs are shared by the peers of one (n, mode)."""
    rows: list[Row] = []
    cache: dict[tuple[int, str], tuple[Tensor, ...]] = {}
    for case, n, mode, peer in specs:
        if (n, mode) not in cache:
            cache.clear()
            if n >= 8192:  # tensors go by refcount; a (slow) full collection only for big inputs
                gc.collect()
            cache[(n, mode)] = inputs(n, mode, shape=shape)
        row = run_one(case, n, mode, peer, cache[(n, mode)], lim, repeats=repeats, long_call=long_call,
                      shape=shape)
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows
