"""Tile classification per mask kind, for a chunk of query blocks against every key block.

Each classifier returns ``(nonempty, full, exact)`` with (nI, nK) bool tensors. Soundness rule
(see blockmap.py): ``nonempty`` may over-approximate, ``full`` may under-approximate.
Combinators follow from set algebra: for A & B, nonempty ⊆ ne(A) ∧ ne(B) and full = full(A) ∧
full(B); for A | B, nonempty = ne(A) ∨ ne(B) and full ⊇ full(A) ∨ full(B); for ~A, the roles of
empty and full swap.

Tiles cover rows r0..r1 and cols c0..c1, so the differences d = i - j inside a tile take every
value in [r0 - c1, r1 - c0]: patterns defined by d (windows, dilation, strides) are classified
exactly with integer arithmetic on the tile corners.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnlab.backends.intervals import classify_intervals, classify_intervals_rowwise, row_intervals
from attnlab.functional.masks import Mask, _offset, index_grids

Result = tuple[Tensor, Tensor, bool]


@dataclass(frozen=True)
class Grid:
    q_len: int
    kv_len: int
    bq: int
    bk: int
    batch: int
    heads: int

    @property
    def n_q_blocks(self) -> int:
        return -(-self.q_len // self.bq)

    @property
    def n_kv_blocks(self) -> int:
        return -(-self.kv_len // self.bk)

    def corners(self, i0: int, i1: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Inclusive tile bounds: r0, r1 (nI, 1) and c0, c1 (1, nK)."""
        r0 = torch.arange(i0, i1).view(-1, 1) * self.bq
        c0 = torch.arange(self.n_kv_blocks).view(1, -1) * self.bk
        return r0, (r0 + self.bq).clamp(max=self.q_len) - 1, c0, (c0 + self.bk).clamp(max=self.kv_len) - 1


def _any_multiple(lo: Tensor, hi: Tensor, m: int) -> Tensor:
    """Is there a multiple of m in [lo, hi]?"""
    return torch.div(hi, m, rounding_mode="floor") * m >= lo


def _by_difference(mask: Mask, g: Grid, i0: int, i1: int) -> Result | None:
    """Masks that depend on d = (q + offset) - kv only."""
    r0, r1, c0, c1 = g.corners(i0, i1)
    p = mask.params
    off = _offset(p.get("align", "top-left"), g.q_len, g.kv_len)
    dlo, dhi = r0 + off - c1, r1 + off - c0  # (nI, nK): every d in between occurs in the tile
    if mask.kind == "dilated_sliding_window":
        lo = torch.maximum(dlo, torch.tensor(-p["right"] * p["dilation"]))
        hi = torch.minimum(dhi, torch.tensor(p["left"] * p["dilation"]))
        ne = (lo <= hi) & _any_multiple(lo, hi, p["dilation"])
        full = (dlo >= -p["right"]) & (dhi <= p["left"]) & (p["dilation"] == 1)
        return ne, full, True
    if mask.kind == "sparse_strided":  # d >= 0 and (d <= l or d % l == 0)
        s = p["stride"]
        lo = dlo.clamp(min=0)
        ne = (lo <= dhi) & ((lo <= s) | _any_multiple(lo, dhi, s))
        full = (dlo >= 0) & ((dhi <= s) | (s == 1))
        return ne, full, True
    return None


def _summary_count(x: Tensor, stride: int, summary: int) -> Tensor:
    """#{j in [0, x] : j mod stride >= stride - summary} (0 for x < 0)."""
    n = (x + 1).clamp(min=0)
    return (n // stride) * summary + ((n % stride) - (stride - summary)).clamp(min=0)


def _fixed(mask: Mask, g: Grid, i0: int, i1: int) -> Result:
    r0, r1, c0, c1 = g.corners(i0, i1)
    s, c, causal = mask.params["stride"], mask.params["summary"], mask.params["causal"]
    top = torch.minimum(c1, r1) if causal else c1  # keys at or before the last row
    n_sum = _summary_count(top, s, c) - _summary_count(c0 - 1, s, c)
    same = torch.maximum(r0 // s, c0 // s) <= torch.minimum(r1 // s, c1 // s)
    if causal:
        same = same & (c0 <= r1)
    ne = (n_sum > 0) | same
    all_sum = (_summary_count(c1, s, c) - _summary_count(c0 - 1, s, c)) == (c1 - c0 + 1)
    one_block = (r0 // s == r1 // s) & (c0 // s == c1 // s) & (r0 // s == c0 // s)
    full = (all_sum | one_block) & ((c1 <= r0) if causal else True)
    return ne, full, False


def _rect_counts(layout: Tensor, bs: int, g: Grid, i0: int, i1: int) -> tuple[Tensor, Tensor]:
    """Allowed blocks of a coarse ``layout`` (bs-token blocks) under each tile, and tile area
    in layout cells: a 2-D prefix sum answers every tile in O(1)."""
    r0, r1, c0, c1 = g.corners(i0, i1)
    a0, a1, b0, b1 = r0 // bs, r1 // bs, c0 // bs, c1 // bs
    lay = layout[: int(a1.max()) + 1, : int(b1.max()) + 1].long()
    ps = torch.nn.functional.pad(lay.cumsum(0).cumsum(1), (1, 0, 1, 0))  # (nA+1, nB+1)
    cnt = ps[a1 + 1, b1 + 1] - ps[a0, b1 + 1] - ps[a1 + 1, b0] + ps[a0, b0]
    return cnt, (a1 - a0 + 1) * (b1 - b0 + 1)


def _layout_kind(mask: Mask, g: Grid, i0: int, i1: int) -> Result:
    p = mask.params
    bs = p["block_size"]
    lay = p["layout"](g.q_len, g.kv_len) if callable(p["layout"]) else p["layout"]
    cnt, area = _rect_counts(lay, bs, g, i0, i1)
    # Exact when tiles align with the layout's blocks; otherwise a tile straddles blocks and
    # "partial" may be conservative. The truncated last block is handled by _assemble.
    aligned = g.bq % bs == 0 and g.bk % bs == 0
    return cnt > 0, cnt == area, aligned


def _longformer(mask: Mask, g: Grid, i0: int, i1: int) -> Result:
    r0, r1, c0, c1 = g.corners(i0, i1)
    w, table = mask.params["window"], mask.params["global"]
    win_ne = torch.maximum(r0 - c1, torch.tensor(-w)) <= torch.minimum(r1 - c0, torch.tensor(w))
    win_full = (r0 - c1 >= -w) & (r1 - c0 <= w)
    ps = torch.nn.functional.pad(table.long().cumsum(0), (1, 0))  # prefix counts of global ids

    def n_glob(a: Tensor, b: Tensor) -> Tensor:
        n = table.numel()
        return ps[(b + 1).clamp(max=n)] - ps[a.clamp(max=n)]

    gr, gc = n_glob(r0, r1), n_glob(c0, c1)
    ne = win_ne | (gr > 0) | (gc > 0)
    full = win_full | (gr == r1 - r0 + 1) | (gc == c1 - c0 + 1)
    return ne, full, False


def _dense_tensor(dense: Tensor, g: Grid, i0: int, i1: int) -> Result:
    """A dense bool mask (B|1, H|1, Lq, Lk): reduce each tile with any / all."""
    rows = dense[..., i0 * g.bq: min(i1 * g.bq, g.q_len), :]
    return _reduce(rows, g, i1 - i0)


def _reduce(allowed: Tensor, g: Grid, n_i: int) -> Result:
    """allowed (..., rows, Lk) bool -> per-tile (any, all) over batch, heads, rows and cols."""
    pr, pc = n_i * g.bq - allowed.shape[-2], g.n_kv_blocks * g.bk - allowed.shape[-1]
    a = allowed.reshape(-1, allowed.shape[-2], allowed.shape[-1])  # (BH, rows, Lk)
    ne = torch.nn.functional.pad(a, (0, pc, 0, pr), value=False)
    full = torch.nn.functional.pad(a, (0, pc, 0, pr), value=True)  # padding never spoils "all"
    ne = ne.view(-1, n_i, g.bq, g.n_kv_blocks, g.bk).any(4).any(2).any(0)  # (nI, nK)
    full = full.view(-1, n_i, g.bq, g.n_kv_blocks, g.bk).all(4).all(2).all(0)
    return ne, full, True


def _evaluate(mask: Mask, g: Grid, i0: int, i1: int) -> Result:
    """Custom mask_mods: evaluate every pair of the chunk (exact; the fallback)."""
    b, h, _, kv = index_grids(g.batch, g.heads, 1, g.kv_len)
    q = torch.arange(i0 * g.bq, min(i1 * g.bq, g.q_len)).view(1, 1, -1, 1)
    m = mask.evaluate(b, h, q, kv, g.q_len, g.kv_len)
    if not isinstance(m, Tensor) or m.dtype != torch.bool:
        raise TypeError(f"mask {mask.name}: expected the mask_mod to return a bool tensor")
    return _reduce(m.expand(m.shape[0], m.shape[1], q.shape[2], g.kv_len), g, i1 - i0)


def classify_chunk(mask: Mask | None, dense: Tensor | None, g: Grid, i0: int, i1: int) -> Result:
    """Classify tiles of query blocks i0..i1-1 against all key blocks."""
    res = _classify(mask, g, i0, i1) if mask is not None else None
    if dense is not None:
        d = _dense_tensor(dense, g, i0, i1)
        res = d if res is None else (res[0] & d[0], res[1] & d[1], False)
    if res is None:  # no mask at all
        shape = (i1 - i0, g.n_kv_blocks)
        res = (torch.ones(shape, dtype=torch.bool), torch.ones(shape, dtype=torch.bool), True)
    return res


def _classify(mask: Mask, g: Grid, i0: int, i1: int) -> Result:
    iv = row_intervals(mask, g.q_len, g.kv_len)
    if iv is not None:
        r0, r1, c0, c1 = g.corners(i0, i1)
        if iv.monotone():
            shape = (r0.shape[0], c0.shape[1])
            ne, full = classify_intervals(iv, r0.expand(shape).flatten(), r1.expand(shape).flatten(),
                                          c0.expand(shape).flatten(), c1.expand(shape).flatten())
            return ne.view(shape), full.view(shape), True
        rows = r0 + torch.arange(g.bq).view(1, -1)  # (nI, bq)
        rows = torch.where(rows < g.q_len, rows, -1)
        ne, full = classify_intervals_rowwise(iv, rows, c0.view(-1), c1.view(-1))
        return ne, full, True
    k = mask.kind
    if k in ("and", "or"):
        (na, fa, _), (nb, fb, _) = (_classify(p, g, i0, i1) for p in mask.parts)
        if k == "and":
            return na & nb, fa & fb, False
        return na | nb, fa | fb, False
    if k == "not":
        n, f, e = _classify(mask.parts[0], g, i0, i1)
        return ~f, ~n, e
    if k in ("dilated_sliding_window", "sparse_strided"):
        got = _by_difference(mask, g, i0, i1)
        assert got is not None
        return got
    if k == "sparse_fixed":
        return _fixed(mask, g, i0, i1)
    if k in ("bigbird", "block_sparse"):
        return _layout_kind(mask, g, i0, i1)
    if k == "longformer":
        return _longformer(mask, g, i0, i1)
    return _evaluate(mask, g, i0, i1)
