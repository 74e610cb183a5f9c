"""Coarse-grained parallelism for the tiled kernel: query chunks spread over worker threads.

Every torch op parallelises itself (OpenMP), but a tile is only a few milliseconds of work
split into ~20 ops; thousands of small parallel regions pay a barrier each, and on a busy
machine a barrier waits for a descheduled thread (a 2-core run measured 6x slower than one
core). FlashAttention-2 (Dao 2023, §3.2) parallelises over (batch, head, query block) for the
same reason. Here the query chunks of a plan are shared out to ``torch.get_num_threads()``
Python threads (torch releases the GIL inside ops), each running its ops single-threaded.

``torch.set_num_threads`` is process-wide for MKL, so it is set to 1 for the duration of the
call and restored afterwards; torch work that other threads run concurrently meanwhile is
single-threaded. A whole tiled call can hold that setting (:func:`owned_threads`): its small
serial ops (a finiteness check, the setup) then run without an OpenMP region each, which on a
busy machine waits for a descheduled thread (a 1M-element sum: 0.05 ms on one thread, ~16 ms on
two under load).

The helper threads are kept between calls, and the calling thread is a worker too: starting a
thread, or waking one, waits for the OS to schedule it (~9 ms per thread measured under load),
and the caller never waits for a helper that has not started by the time the queue is empty.

Which worker runs which chunk depends on the scheduler, so nothing a worker computes may depend
on it: the forward writes disjoint rows, and the backward sums its overlapping dK/dV bands per
:class:`Group` (a fixed, contiguous run of chunks, each summed into its own buffer in a fixed
order) and then over the groups in a fixed order. The result is bitwise the same on every run
with the same number of threads, whatever the scheduling (tests/tiled/test_tiled_determinism.py).
"""

from __future__ import annotations

import contextlib
import os
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


_OWNER = threading.local()  # .workers: set while this thread holds the thread setting


def workers() -> int:
    """Worker threads a tiled call in this thread gets: the thread count from before
    :func:`owned_threads` inside one, else ``torch.get_num_threads()``."""
    return getattr(_OWNER, "workers", None) or torch.get_num_threads()


@contextlib.contextmanager
def owned_threads() -> Iterator[int]:
    """Hold the thread setting for a whole tiled call: torch ops run single-threaded inside
    (``torch.set_num_threads(1)``, restored on exit) and :func:`run_parallel` gets the thread
    count from before as its workers. Yields that count. Nested scopes share the outer one; when
    another thread holds the setting, the call runs serially without touching it (yields 1)."""
    held = getattr(_OWNER, "workers", None)
    if held is not None:
        yield held
        return
    n = torch.get_num_threads()
    if n <= 1 or not _LOCK.acquire(blocking=False):
        yield 1
        return
    try:
        torch.set_num_threads(1)
        _OWNER.workers = n
        yield n
    finally:
        _OWNER.workers = None
        torch.set_num_threads(n)
        _LOCK.release()


# (pid, size, helpers), kept between calls; a forked child (no threads of its parent) makes its own
_POOL: tuple[int, int, ThreadPoolExecutor] | None = None


def _helpers(n: int) -> ThreadPoolExecutor:
    global _POOL
    pid = os.getpid()
    if _POOL is None or _POOL[0] != pid or _POOL[1] < n:
        if _POOL is not None and _POOL[0] == pid:
            _POOL[2].shutdown(wait=False)  # idle: its threads exit
        _POOL = (pid, n, ThreadPoolExecutor(n, thread_name_prefix="attnlab-tiled"))
    return _POOL[2]


def run_parallel(work: Callable[[Iterable[T], int], None], items: Sequence[T],
                 threads: int | None = None, cost: Callable[[T], int] | None = None) -> int:
    """Call ``work(items, worker_index)`` in up to ``threads`` workers (default: :func:`workers`)
    that pull items (query chunks, or groups of them) from a shared queue, biggest ``cost``
    first (default: a chunk's tiles; dynamic scheduling: a worker that the OS descheduled simply
    takes fewer). The calling thread is worker 0; helpers that start after the queue ran dry
    return at once and are not waited for. Returns the number of workers allowed.

    Work runs under no_grad in the workers (grad mode is thread-local; new threads start
    with it on), and under inference_mode when the caller is in it: tensors the caller made
    there (the output buffers) may only be written inside it."""
    n = workers() if threads is None else threads
    n = min(n, len(items))
    if n <= 1:
        work(items, 0)
        return 1
    if getattr(_OWNER, "workers", None) is not None:  # this call holds the setting already
        return _run_workers(work, items, n, cost)
    if not _LOCK.acquire(blocking=False):  # another thread holds it: run serially, leave it alone
        work(items, 0)
        return 1
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        return _run_workers(work, items, n, cost)
    finally:
        torch.set_num_threads(prev)
        _LOCK.release()


def _run_workers(work: Callable[[Iterable[T], int], None], items: Sequence[T], n: int,
                 cost: Callable[[T], int] | None) -> int:
    queue = iter(sorted(items, key=cost or chunk_cost, reverse=True))  # type: ignore[arg-type]
    take = threading.Lock()
    closed = False  # the queue ran dry in the caller: late helpers do nothing
    running: list[threading.Event] = []  # one per helper that started work, set when it ends
    errors: list[BaseException] = []

    def pull() -> Iterator[T]:
        while True:
            with take:
                c = next(queue, None)
            if c is None:
                return
            yield c

    inference = torch.is_inference_mode_enabled()

    def body(i: int) -> None:
        with take:
            if closed:
                return
            done = threading.Event()
            running.append(done)
        try:
            torch.set_num_threads(1)  # this thread's OpenMP setting; MKL's is process-wide
            with torch.inference_mode(inference), torch.no_grad():
                work(pull(), i)
        except BaseException as e:  # re-raised in the caller
            errors.append(e)
            with take:  # stop the others early
                for _ in queue:
                    pass
        finally:
            done.set()

    pool = _helpers(n - 1)
    for i in range(1, n):
        pool.submit(body, i)
    try:
        with torch.inference_mode(inference), torch.no_grad():
            work(pull(), 0)
    finally:
        with take:
            closed = True
            for _ in queue:  # the caller failed: leave nothing for the helpers
                pass
            started = list(running)
        for done in started:
            done.wait()
    if errors:
        raise errors[0]
    return n
