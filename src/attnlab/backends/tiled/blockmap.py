"""Block maps: which (query block, key block) tiles of the score matrix need computing.

FlashAttention (Dao et al. 2022, Alg. 1) walks every tile; block-sparse FlashAttention (§3.3)
and FlexAttention's BlockMask skip empty tiles and leave full tiles unmasked. A tile is

- empty:   no (q, kv) pair in it may attend -> skipped;
- full:    every pair may attend -> computed without evaluating the mask;
- partial: computed, then the mask_mod is evaluated on that tile only.

The map is derived from the mask's pattern (analytic: its rows as intervals or its own tile
arithmetic, see attnlab.functional.masks and classify.py) or, for custom mask_mods, by
evaluating the mask in chunks of query blocks (exact, O(Lq·Lk) predicate calls once per shape
and cached). Conservative answers are allowed in one direction only: a tile may be called
partial when it is really empty or full (costs time), never empty or full when it is not (would
be wrong). ``exact`` says which. Stored sparse (CSR over query blocks) so a 1M-token sliding
window needs no Lq x Lk anything.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from attnlab.backends.tiled.classify import classify_chunk
from attnlab.backends.tiled.tuning import BLOCK_MAP_CACHE, CHUNK_TILES
from attnlab.functional.masks import Mask, index_grids
from attnlab.functional.masks.grid import Blocks, TileGrid
from attnlab.functional.masks.intervals import BIG, classify_intervals, row_intervals


@dataclass(frozen=True)
class BlockMap(Blocks):
    """CSR over query blocks: row I's tiles are cols[row_ptr[I]:row_ptr[I+1]] (ascending)."""

    q_len: int
    kv_len: int
    bq: int
    bk: int
    row_ptr: Tensor  # (nQB + 1,) int64
    cols: Tensor  # (nnz,) int64 key-block indices
    full: Tensor  # (nnz,) bool: no mask needed in this tile
    exact: bool  # False: some tiles called partial may really be empty or full

    @property
    def counts(self) -> Tensor:  # (nQB,) tiles per query block
        return self.row_ptr.diff()

    def density(self) -> float:
        """Fraction of tiles computed (1.0 for dense attention)."""
        return self.cols.numel() / max(1, self.n_q_blocks * self.n_kv_blocks)

    def to_dense(self) -> Tensor:
        """(nQB, nKB) int8: 0 empty, 1 partial, 2 full (for tests and pictures)."""
        out = torch.zeros(self.n_q_blocks, self.n_kv_blocks, dtype=torch.int8)
        rows = torch.repeat_interleave(torch.arange(self.n_q_blocks), self.counts)
        out[rows, self.cols] = torch.where(self.full, 2, 1).to(torch.int8)
        return out


def _tile_bounds(n_blocks: int, block: int, length: int) -> tuple[Tensor, Tensor]:
    start = torch.arange(n_blocks) * block
    return start, (start + block).clamp(max=length) - 1  # inclusive bounds (nB,)


def _from_intervals(mask: Mask | None, grid: TileGrid) -> BlockMap | None:
    """Fast path: enumerate, per query block, only the key blocks its rows can reach."""
    iv = row_intervals(mask, grid.q_len, grid.kv_len)
    if iv is None or not iv.monotone():
        return None
    nq, bq, bk = grid.n_q_blocks, grid.bq, grid.bk
    pad = nq * bq - grid.q_len
    # each (Bm, Lq), Bm = 1 or B (see Intervals), padded to (Bm, nQB·bq)
    ne = torch.nn.functional.pad(iv.nonempty, (0, pad)).view(-1, nq, bq)  # (Bm, nQB·bq) -> (Bm, nQB, bq)
    lo = torch.nn.functional.pad(iv.lo, (0, pad), value=BIG).view(-1, nq, bq)  # (Bm, nQB·bq) -> (Bm, nQB, bq)
    hi = torch.nn.functional.pad(iv.hi, (0, pad), value=-1).view(-1, nq, bq)  # (Bm, nQB·bq) -> (Bm, nQB, bq)
    big = torch.full_like(lo, BIG)
    jlo = torch.where(ne, lo, big).amin(dim=(0, 2)) // bk  # (nQB,) first reachable key block
    jhi = torch.where(ne, hi, -big).amax(dim=(0, 2)) // bk  # (nQB,) last one
    live = ne.any(dim=(0, 2))
    span = torch.where(live, jhi - jlo + 1, torch.zeros_like(jlo)).clamp(min=0)  # (nQB,)
    rows = torch.repeat_interleave(torch.arange(nq), span)  # (ncand,)
    first = torch.cumsum(span, 0) - span
    cols = jlo[rows] + (torch.arange(rows.numel()) - first[rows])  # (ncand,)
    r0, r1 = _tile_bounds(nq, bq, grid.q_len)
    c0, c1 = _tile_bounds(grid.n_kv_blocks, bk, grid.kv_len)
    tne, tfull = classify_intervals(iv, r0[rows], r1[rows], c0[cols], c1[cols])
    return _assemble(grid, rows[tne], cols[tne], tfull[tne], exact=True)


def _assemble(grid: TileGrid, rows: Tensor, cols: Tensor, full: Tensor, *, exact: bool) -> BlockMap:
    if grid.kv_len % grid.bk:  # the last key block holds padding: never "full"
        full = full & (cols != grid.n_kv_blocks - 1)
    row_ptr = torch.zeros(grid.n_q_blocks + 1, dtype=torch.long)
    row_ptr[1:] = torch.cumsum(torch.bincount(rows, minlength=grid.n_q_blocks), 0)
    return BlockMap(grid.q_len, grid.kv_len, grid.bq, grid.bk, row_ptr, cols, full, exact)


def _from_chunks(mask: Mask | None, dense: Tensor | None, grid: TileGrid) -> BlockMap:
    """General path: classify all key blocks for chunks of query blocks, keep the non-empty."""
    nq, nk = grid.n_q_blocks, grid.n_kv_blocks
    step = max(1, CHUNK_TILES // max(1, nk))
    rows_l, cols_l, full_l, exact = [], [], [], True
    for i0 in range(0, nq, step):
        i1 = min(nq, i0 + step)
        ne, full, ex = classify_chunk(mask, dense, grid, i0, i1)  # (nI, nK) each
        exact &= ex
        r, c = ne.nonzero(as_tuple=True)
        rows_l.append(r + i0)
        cols_l.append(c)
        full_l.append(full[r, c])
    return _assemble(grid, torch.cat(rows_l), torch.cat(cols_l), torch.cat(full_l), exact=exact)


_CACHE: OrderedDict[tuple, tuple[object, object, BlockMap]] = OrderedDict()
_LOCK = threading.Lock()


def block_map(mask: Mask | None, q_len: int, kv_len: int, bq: int, bk: int, *,
              batch: int = 1, heads: int = 1, dense: Tensor | None = None) -> BlockMap:
    """The block map of ``mask`` (and a dense bool mask, if any) for bq x bk tiles.

    The union over batch and heads: a tile is skipped only if it is empty for all of them.
    Cached per (mask object, shape, tile size): building it costs O(Lq) for interval masks,
    O(tiles) for the sparse patterns and O(Lq·Lk) calls for custom masks (dense bool masks are
    reduced each call and never cached).
    """
    key = (id(mask), id(dense), q_len, kv_len, bq, bk, batch, heads)
    with _LOCK:  # tiled calls may run on several threads: get + move_to_end must not interleave
        hit = _CACHE.get(key)
        if hit is not None and hit[0] is mask and hit[1] is dense:
            _CACHE.move_to_end(key)
            return hit[2]
    grid = TileGrid(q_len, kv_len, bq, bk, batch, heads)
    if mask is not None:  # one evaluation at the last pair: length checks of the mask fire here
        last = torch.zeros(1, 1, 1, 1, dtype=torch.long)
        mask.evaluate(last, last, last + q_len - 1, last + kv_len - 1, q_len, kv_len)
    bm = _from_intervals(mask, grid) if dense is None else None
    if bm is None:
        bm = _from_chunks(mask, dense, grid)
    if dense is not None:  # a dense mask is O(Lq·Lk) memory: never keep one alive in a cache
        return bm
    with _LOCK:
        _CACHE[key] = (mask, dense, bm)  # the strong refs keep id() from being reused
        while len(_CACHE) > BLOCK_MAP_CACHE:
            _CACHE.popitem(last=False)
    return bm


def count_allowed(mask: Mask | None, q_len: int, kv_len: int, *, batch: int = 1, heads: int = 1,
                  block: int = 256) -> int:
    """Allowed (q, kv) pairs summed over batch and heads, without an Lq x Lk tensor:
    interval masks in closed form, else full tiles by area plus partial tiles evaluated."""
    iv = row_intervals(mask, q_len, kv_len)
    if iv is not None:
        per = iv.count()
        return per * heads * (batch if iv.lo.shape[0] == 1 else 1)
    bm = block_map(mask, q_len, kv_len, block, block, batch=batch, heads=heads)
    rows = torch.repeat_interleave(torch.arange(bm.n_q_blocks), bm.counts)
    r0, r1 = _tile_bounds(bm.n_q_blocks, block, q_len)
    c0, c1 = _tile_bounds(bm.n_kv_blocks, block, kv_len)
    area = (r1[rows] - r0[rows] + 1) * (c1[bm.cols] - c0[bm.cols] + 1)
    total = int(area[bm.full].sum()) * batch * heads
    assert mask is not None
    b, h, _, _ = index_grids(batch, heads, 1, 1)
    for t in (~bm.full).nonzero().flatten().tolist():  # (n_partial, 1) -> (n_partial,) tile positions
        i, j = int(rows[t]), int(bm.cols[t])
        q = torch.arange(int(r0[i]), int(r1[i]) + 1).view(1, 1, -1, 1)  # (rows,) -> (1, 1, rows, 1)
        kv = torch.arange(int(c0[j]), int(c1[j]) + 1).view(1, 1, 1, -1)  # (cols,) -> (1, 1, 1, cols)
        m = mask.evaluate(b, h, q, kv, q_len, kv_len)
        total += int(m.expand(batch, heads, q.shape[2], kv.shape[3]).sum())  # -> (B, H, rows, cols)
    return total
