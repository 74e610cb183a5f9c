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
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from attnlab.backends.tiled_plan import QueryChunk

_LOCK = threading.Lock()  # one parallel tiled call at a time owns the thread setting


def _cost(chunk: QueryChunk) -> int:
    return sum(s.k_blocks.numel() for s in chunk.segments)


def run_parallel(work: Callable[[Iterable[QueryChunk], int], None], chunks: Sequence[QueryChunk],
                 threads: int | None = None) -> int:
    """Call ``work(chunks, worker_index)`` in up to ``threads`` workers that pull chunks from a
    shared queue, biggest first (dynamic scheduling: a worker that the OS descheduled simply
    takes fewer chunks). Returns the number of workers used.

    Work runs under no_grad in the workers (grad mode is thread-local; new threads start
    with it on)."""
    n = torch.get_num_threads() if threads is None else threads
    n = min(n, len(chunks))
    if n <= 1 or not _LOCK.acquire(blocking=False):
        work(chunks, 0)
        return 1
    queue = iter(sorted(chunks, key=_cost, reverse=True))
    take = threading.Lock()

    def pull() -> Iterator[QueryChunk]:
        while True:
            with take:
                c = next(queue, None)
            if c is None:
                return
            yield c

    def body(i: int) -> None:
        torch.set_num_threads(1)
        with torch.no_grad():
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
