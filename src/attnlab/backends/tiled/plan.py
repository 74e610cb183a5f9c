"""From a block map to a short list of big batched matmuls.

The naive flash loop (Dao et al. 2022, Alg. 1) visits one (query block, key block) tile at a
time; in Python that is a loop over up to (n/64)² small matmuls. Instead, query blocks that
read the same *number* of key blocks are stacked: each contributes its own band of key blocks
(gathered, or a strided view when the bands are evenly spaced, as for sliding windows), and
one batched matmul covers nb query blocks x w key blocks x every head. Bands longer than the
tile budget are cut into key segments that the kernel merges with the online softmax.
The budget bounds the score tile, so memory stays O(Lq·Dh + budget).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor

from attnlab.backends.tiled.blockmap import BlockMap
from attnlab.backends.tiled.tuning import PLAN_CACHE


@dataclass(frozen=True)
class Segment:
    """One batched tile: query block r reads key blocks k_blocks[r, :]."""

    k_blocks: Tensor  # (nb, w) int64
    k_start: int | None  # when k_blocks[r, p] == k_start + r·k_step + p (strided view, no gather)
    k_step: int
    masked: tuple[tuple[int, int], ...]  # runs [p0, p1) of band positions holding partial tiles

    @property
    def shared(self) -> bool:
        """Every query block reads the same keys: the tile is one plain GEMM per head."""
        return self.k_start is not None and (self.k_step == 0 or self.k_blocks.shape[0] == 1)


@dataclass(frozen=True)
class QueryChunk:
    q_blocks: Tensor  # (nb,) int64
    q_start: int | None  # when q_blocks == q_start + arange(nb)
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class Plan:
    bq: int
    bk: int
    n_q_blocks: int
    n_kv_blocks: int
    chunks: tuple[QueryChunk, ...]
    counts: Tensor  # (nQB,) key blocks per query block

    def max_tiles(self, gathered: bool = False) -> int:
        """Most (query block, key block) tiles in one segment (only gathered ones if asked)."""
        return max((s.k_blocks.numel() for c in self.chunks for s in c.segments
                    if not gathered or s.k_start is None), default=0)

    def tiles(self) -> int:
        return sum(s.k_blocks.numel() for c in self.chunks for s in c.segments)


def _runs(flags: list[bool]) -> tuple[tuple[int, int], ...]:
    out, start = [], None
    for p, f in enumerate([*flags, False]):
        if f and start is None:
            start = p
        elif not f and start is not None:
            out.append((start, p))
            start = None
    return tuple(out)


def _segment(kb: Tensor, full: Tensor) -> Segment:
    nb, w = kb.shape
    masked = _runs((~full.all(0)).tolist())
    first = kb[:, :1]  # (nb, 1)
    start, step = None, 0
    if torch.equal(kb, first + torch.arange(w)):  # each band is contiguous
        if nb == 1:
            start = int(first[0, 0])
        else:
            step = int(first[1, 0] - first[0, 0])
            firsts = first.flatten()  # (nb, 1) -> (nb,): each band's first key block
            if step >= 0 and torch.equal(firsts, first[0, 0] + step * torch.arange(nb)):
                start = int(first[0, 0])
    return Segment(kb, start, step if start is not None else 0, masked)


def _pieces(kb: Tensor, seg_w: int) -> list[tuple[int, int]]:
    """Split a chunk's band positions where some row's key blocks stop being contiguous (a
    Longformer row is [global block | window band]): each piece can then be read as a view
    instead of a gathered copy. Scattered rows (random blocks) stay one gathered piece."""
    w = kb.shape[1]
    gaps = (kb[:, 1:] != kb[:, :-1] + 1).any(0)  # (nb, w-1) -> (w-1,): some row jumps after p
    inner = (gaps.nonzero().flatten() + 1).tolist()  # (n_breaks, 1) -> (n_breaks,)
    breaks = [0, *inner, w]
    runs = list(pairwise(breaks)) if len(breaks) <= 4 else [(0, w)]
    return [(s, min(s + seg_w, e)) for a, e in runs for s in range(a, e, seg_w)]


def _runs_of_bands(qb: Tensor, first: Tensor) -> list[Tensor]:
    """Split query blocks (ascending) into runs where both the query block and its first key
    block move by constant steps: a chunk inside such a run reads its key bands as strided
    views (a dilated window's residue classes, or documents, would otherwise be gathered)."""
    if qb.numel() < 3:
        return [qb]
    dq, df = qb.diff(), first.diff()
    cut = (dq[1:] != dq[:-1]) | (df[1:] != df[:-1])  # break before element i + 2
    idx = (cut.nonzero().flatten() + 2).tolist()  # (n_cuts, 1) -> (n_cuts,)
    return [t for t in torch.tensor_split(qb, idx) if t.numel()]


_CACHE: OrderedDict[tuple[int, int, int, int], tuple[BlockMap, Plan]] = OrderedDict()
_LOCK = threading.Lock()


def build_plan(bm: BlockMap, heads_total: int, budget: int, min_chunks: int = 1) -> Plan:
    """Group query blocks by tile count, stack up to ``budget`` score elements per matmul.

    heads_total: B·H (every tile is computed for all of them at once). ``min_chunks``: make at
    least this many chunks when there are enough query blocks (work for parallel workers).
    Cached per block map (itself cached per mask and shape): a plan costs ~10 ms of Python for
    a few hundred chunks, every call.
    """
    key = (id(bm), heads_total, budget, min_chunks)
    with _LOCK:  # tiled calls may run on several threads: get + move_to_end must not interleave
        hit = _CACHE.get(key)
        if hit is not None and hit[0] is bm:
            _CACHE.move_to_end(key)
            return hit[1]
    plan = _build(bm, heads_total, budget, min_chunks)
    with _LOCK:
        _CACHE[key] = (bm, plan)  # the strong ref keeps id(bm) from being reused
        while len(_CACHE) > PLAN_CACHE:
            _CACHE.popitem(last=False)
    return plan


def _build(bm: BlockMap, heads_total: int, budget: int, min_chunks: int) -> Plan:
    counts, starts = bm.counts, bm.row_ptr[:-1]
    tile = heads_total * bm.bq * bm.bk  # score elements of one tile, all heads
    chunks: list[QueryChunk] = []
    nb_cap = max(1, -(-int((counts > 0).sum()) // max(1, min_chunks)))
    for w in sorted(set(counts.tolist()) - {0}):
        qb = (counts == w).nonzero().flatten()  # (n, 1) -> (n,) query blocks, ascending
        if w * tile <= budget:
            nb, seg_w = min(nb_cap, max(1, budget // (w * tile))), w
        else:
            nb, seg_w = 1, max(1, budget // tile)
        for run in _runs_of_bands(qb, bm.cols[starts[qb]]):
            for c0 in range(0, run.numel(), nb):
                q = run[c0: c0 + nb]
                idx = starts[q].unsqueeze(1) + torch.arange(w)  # (nb,) -> (nb, 1) + (w,): (nb, w) in the CSR
                kb, fb = bm.cols[idx], bm.full[idx]
                segs = tuple(_segment(kb[:, a:e], fb[:, a:e]) for a, e in _pieces(kb, seg_w))
                q_start = int(q[0]) if torch.equal(q, q[0] + torch.arange(q.numel())) else None
                chunks.append(QueryChunk(q, q_start, segs))
    return Plan(bm.bq, bm.bk, bm.n_q_blocks, bm.n_kv_blocks, tuple(chunks), counts)
