"""Coarse-grained parallelism for the tiled kernel: query chunks spread over worker threads.

Every torch op parallelises itself (OpenMP), but a tile is only a few milliseconds of work
split into ~20 ops; thousands of small parallel regions pay a barrier each, and on a busy
machine a barrier waits for a descheduled thread (a 2-core run measured 6x slower than one
core). FlashAttention-2 (Dao 2023, §3.2) parallelises over (batch, head, query block) for the
same reason. Here the query chunks of a plan are shared out to ``torch.get_num_threads()``
Python threads (torch releases the GIL inside ops), each running its ops single-threaded.

``torch.set_num_threads`` is process-wide for MKL, so it is set to 1 for the duration of the
call and restored afterwards; torch work that other threads run concurrently meanwhile is
single-threaded.

Which worker runs which chunk depends on the scheduler, so nothing a worker computes may depend
on it: the forward writes disjoint rows, and the backward sums its overlapping dK/dV bands per
:class:`Group` (a fixed, contiguous run of chunks, each summed into its own buffer in a fixed
order) and then over the groups in a fixed order. The result is bitwise the same on every run
with the same number of threads, whatever the scheduling (tests/tiled/test_tiled_determinism.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch

from attnlab.backends.tiled.plan import QueryChunk

_LOCK = threading.Lock()  # one parallel tiled call at a time owns the thread setting
T = TypeVar("T")


def chunk_cost(chunk: QueryChunk) -> int:
    return sum(s.k_blocks.numel() for s in chunk.segments)


@dataclass(frozen=True)
class Group:
    """Consecutive query chunks (by first query block) whose dK/dV are summed, in this order, into
    one buffer covering key blocks [lo, hi): the reduction order is fixed by the plan alone."""

    index: int  # position in the fixed order in which group buffers are summed
    chunks: tuple[QueryChunk, ...]
    lo: int  # first key block any tile of the group reads
    hi: int  # one past the last
    cost: int


def _extent(chunk: QueryChunk) -> tuple[int, int]:
    lo = min((int(s.k_blocks.min()) for s in chunk.segments), default=0)
    return lo, max((int(s.k_blocks.max()) + 1 for s in chunk.segments), default=lo)


def fixed_groups(chunks: Sequence[QueryChunk], n: int) -> list[Group]:
    """Cut the chunks, in query order, into at most ``n`` runs of about equal cost. Runs of
    neighbouring query blocks read neighbouring keys, so a group's key extent (its buffer) is
    short for banded masks (a sliding window: ~L/n + window keys)."""
    order = sorted(chunks, key=lambda c: int(c.q_blocks.min()))
    if not order:
        return []
    costs = [chunk_cost(c) for c in order]
    total, n = sum(costs), max(1, min(n, len(order)))
    runs: list[list[QueryChunk]] = [[]]
    done = 0
    for c, w in zip(order, costs, strict=True):
        if runs[-1] and len(runs) < n and done + w / 2 > total * len(runs) / n:
            runs.append([])  # this chunk's midpoint lies past the current run's share
        runs[-1].append(c)
        done += w
    out = []
    for i, r in enumerate(runs):
        ext = [_extent(c) for c in r]
        lo, hi = min(e[0] for e in ext), max(e[1] for e in ext)
        out.append(Group(i, tuple(r), lo, hi, sum(map(chunk_cost, r))))
    return out


def run_parallel(work: Callable[[Iterable[T], int], None], items: Sequence[T],
                 threads: int | None = None, cost: Callable[[T], int] | None = None) -> int:
    """Call ``work(items, worker_index)`` in up to ``threads`` workers that pull items (query
    chunks, or groups of them) from a shared queue, biggest ``cost`` first (default: a chunk's
    tiles; dynamic scheduling: a worker that the OS descheduled simply takes fewer). Returns
    the number of workers used.

    Work runs under no_grad in the workers (grad mode is thread-local; new threads start
    with it on), and under inference_mode when the caller is in it: tensors the caller made
    there (the output buffers) may only be written inside it."""
    n = torch.get_num_threads() if threads is None else threads
    n = min(n, len(items))
    if n <= 1 or not _LOCK.acquire(blocking=False):
        work(items, 0)
        return 1
    queue = iter(sorted(items, key=cost or chunk_cost, reverse=True))  # type: ignore[arg-type]
    take = threading.Lock()

    def pull() -> Iterator[T]:
        while True:
            with take:
                c = next(queue, None)
            if c is None:
                return
            yield c

    inference = torch.is_inference_mode_enabled()

    def body(i: int) -> None:
        torch.set_num_threads(1)
        with torch.inference_mode(inference), torch.no_grad():
            work(pull(), i)

    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with ThreadPoolExecutor(n, thread_name_prefix="attnlab-tiled") as pool:
            for f in [pool.submit(body, i) for i in range(n)]:
                f.result()
    finally:
        torch.set_num_threads(prev)
        _LOCK.release()
    return n
