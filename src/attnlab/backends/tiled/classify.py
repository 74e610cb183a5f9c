"""Tile classes for a chunk of query blocks against every key block: the block map's question.

Each answer is ``(nonempty, full, exact)`` with (nI, nK) bool tensors. Soundness rule (see
blockmap.py): ``nonempty`` may over-approximate, ``full`` may under-approximate. The mask's
:class:`~attnlab.functional.masks.Pattern` answers when it can (rows as intervals, or its own
tile arithmetic); otherwise the predicate is evaluated on every pair of the chunk (exact).
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.functional.masks import Mask, index_grids
from attnlab.functional.masks.grid import TileClasses, TileGrid
from attnlab.functional.masks.intervals import (
    classify_intervals,
    classify_intervals_rowwise,
    row_intervals,
)


def _dense_tensor(dense: Tensor, g: TileGrid, i0: int, i1: int) -> TileClasses:
    """A dense bool mask (B|1, H|1, Lq, Lk): reduce each tile with any / all."""
    rows = dense[..., i0 * g.bq: min(i1 * g.bq, g.q_len), :]
    return _reduce(rows, g, i1 - i0)


def _reduce(allowed: Tensor, g: TileGrid, n_i: int) -> TileClasses:
    """allowed (..., rows, Lk) bool -> per-tile (any, all) over batch, heads, rows and cols."""
    pr, pc = n_i * g.bq - allowed.shape[-2], g.n_kv_blocks * g.bk - allowed.shape[-1]
    a = allowed.reshape(-1, allowed.shape[-2], allowed.shape[-1])  # (B|1, H|1, rows, Lk) -> (b·h, rows, Lk)
    ne = torch.nn.functional.pad(a, (0, pc, 0, pr), value=False)
    full = torch.nn.functional.pad(a, (0, pc, 0, pr), value=True)  # padding never spoils "all"
    # (b·h, nI·bq, nK·bk) -> (b·h, nI, bq, nK, bk), reduced over bk, bq and b·h -> (nI, nK)
    ne = ne.view(-1, n_i, g.bq, g.n_kv_blocks, g.bk).any(4).any(2).any(0)  # -> (nI, nK)
    full = full.view(-1, n_i, g.bq, g.n_kv_blocks, g.bk).all(4).all(2).all(0)  # -> (nI, nK)
    return ne, full, True


def _evaluate(mask: Mask, g: TileGrid, i0: int, i1: int) -> TileClasses:
    """Custom mask_mods: evaluate every pair of the chunk (exact; the fallback)."""
    b, h, _, kv = index_grids(g.batch, g.heads, 1, g.kv_len)
    q = torch.arange(i0 * g.bq, min(i1 * g.bq, g.q_len)).view(1, 1, -1, 1)  # (rows,) -> (1, 1, rows, 1)
    m = mask.evaluate(b, h, q, kv, g.q_len, g.kv_len)
    if not isinstance(m, Tensor) or m.dtype != torch.bool:
        raise TypeError(f"mask {mask.name}: expected the mask_mod to return a bool tensor")
    m = m.expand(m.shape[0], m.shape[1], q.shape[2], g.kv_len)  # (B|1, H|1, rows|1, Lk|1) -> (.., rows, Lk)
    return _reduce(m, g, i1 - i0)


def classify_mask(mask: Mask, g: TileGrid, i0: int, i1: int) -> TileClasses:
    """Tile classes of one mask: its rows as intervals, else its pattern's tile arithmetic
    (combinators recurse through this function), else the predicate evaluated."""
    iv = row_intervals(mask, g.q_len, g.kv_len)
    if iv is not None:
        r0, r1, c0, c1 = g.corners(i0, i1)
        if iv.monotone():
            shape = (r0.shape[0], c0.shape[1])  # (nI, nK)
            # one entry per tile:
            rs = [r.expand(shape).flatten() for r in (r0, r1)]  # (nI, 1) -> (nI, nK) -> (nI·nK,)
            cs = [c.expand(shape).flatten() for c in (c0, c1)]  # (1, nK) -> (nI, nK) -> (nI·nK,)
            ne, full = classify_intervals(iv, rs[0], rs[1], cs[0], cs[1])
            return ne.view(shape), full.view(shape), True  # (nI·nK,) -> (nI, nK)
        rows = r0 + torch.arange(g.bq).view(1, -1)  # (nI, 1) + (bq,) -> (1, bq): (nI, bq)
        rows = torch.where(rows < g.q_len, rows, -1)
        ne, full = classify_intervals_rowwise(iv, rows, c0.view(-1), c1.view(-1))  # c0, c1 (1, nK) -> (nK,)
        return ne, full, True
    got = mask.pattern.tiles(mask, g, i0, i1, classify_mask)
    return got if got is not None else _evaluate(mask, g, i0, i1)


def classify_chunk(mask: Mask | None, dense: Tensor | None, g: TileGrid, i0: int, i1: int) -> TileClasses:
    """Classify tiles of query blocks i0..i1-1 against all key blocks (mask and dense mask)."""
    res = classify_mask(mask, g, i0, i1) if mask is not None else None
    if dense is not None:
        d = _dense_tensor(dense, g, i0, i1)
        res = d if res is None else (res[0] & d[0], res[1] & d[1], False)
    if res is None:  # no mask at all
        shape = (i1 - i0, g.n_kv_blocks)
        res = (torch.ones(shape, dtype=torch.bool), torch.ones(shape, dtype=torch.bool), True)
    return res
