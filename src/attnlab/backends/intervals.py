"""Masks whose rows are key intervals: query i may attend exactly keys lo[i]..hi[i].

Causal, sliding window, prefix-LM, padding, packed documents (sorted segment ids) and their
intersections (``&``) are all of this form. Knowing the interval of every row is O(Lq) memory
and gives the block map exactly and cheaply: a (query block, key block) tile is empty, full or
partial by comparing a few row bounds with the tile's columns, never by evaluating the
Lq x Lk pairs. This is what makes the block map of a 1M-token sliding window take
milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnlab.functional.masks import Mask, _offset

BIG = 2**62


@dataclass(frozen=True)
class Intervals:
    """Inclusive key bounds per query row, clipped to [0, Lk - 1]; a row with lo > hi is empty.

    lo, hi: (Bm, Lq) int64 where Bm is 1 or the batch size (padding / per-batch documents).
    """

    lo: Tensor
    hi: Tensor

    @property
    def nonempty(self) -> Tensor:  # (Bm, Lq) bool
        return self.lo <= self.hi

    def monotone(self) -> bool:
        """lo and hi never decrease over the non-empty rows (what the fast tests assume)."""
        for b in range(self.lo.shape[0]):
            keep = self.nonempty[b]
            lo, hi = self.lo[b][keep], self.hi[b][keep]
            if lo.numel() > 1 and (bool((lo.diff() < 0).any()) or bool((hi.diff() < 0).any())):
                return False
        return True

    def count(self) -> int:
        """Allowed (q, kv) pairs, summed over the Bm rows of intervals."""
        return int((self.hi - self.lo + 1).clamp(min=0).sum())


def _rows(q_len: int) -> Tensor:
    return torch.arange(q_len).view(1, -1)  # (1, Lq)


def _sorted(t: Tensor) -> bool:
    return t.shape[-1] < 2 or bool((t.diff(dim=-1) >= 0).all())


def _document(params: dict, q_len: int, kv_len: int) -> tuple[Tensor, Tensor] | None:
    qs, ks = params["q_segments"], params["kv_segments"]  # (Bq|1, Lq), (Bk|1, Lk)
    if qs.shape[1] != q_len or ks.shape[1] != kv_len or not _sorted(ks):
        return None  # unsorted keys: a row's keys are not one interval
    bm = max(qs.shape[0], ks.shape[0])
    qs, ks = qs.expand(bm, -1), ks.expand(bm, -1)
    lo = torch.stack([torch.searchsorted(ks[b].contiguous(), qs[b].contiguous(), right=False)
                      for b in range(bm)])
    hi = torch.stack([torch.searchsorted(ks[b].contiguous(), qs[b].contiguous(), right=True)
                      for b in range(bm)]) - 1
    return lo, hi


def _padding(params: dict, q_len: int, kv_len: int) -> tuple[Tensor, Tensor]:
    ql, kl = params["q_lengths"], params["k_lengths"]
    bm = max(1 if ql is None else ql.numel(), 1 if kl is None else kl.numel())
    hi = torch.full((bm, q_len), kv_len - 1, dtype=torch.long)
    if kl is not None:
        hi = torch.minimum(hi, (kl.view(-1, 1) - 1).expand(bm, q_len))
    lo = torch.zeros(bm, q_len, dtype=torch.long)
    if ql is not None:
        lo = torch.where(_rows(q_len) < ql.view(-1, 1), lo, torch.full_like(lo, BIG))
    return lo, hi


def row_intervals(mask: Mask | None, q_len: int, kv_len: int) -> Intervals | None:
    """The rows of ``mask`` as key intervals, or None when it is not an interval mask."""
    i = _rows(q_len)
    if mask is None or mask.kind == "full":
        lo, hi = torch.zeros_like(i), torch.full_like(i, kv_len - 1)
    elif mask.kind == "causal":
        lo, hi = torch.zeros_like(i), i + _offset(mask.params["align"], q_len, kv_len)
    elif mask.kind == "sliding_window":
        c = i + _offset(mask.params["align"], q_len, kv_len)
        lo, hi = c - mask.params["left"], c + mask.params["right"]
    elif mask.kind == "prefix_lm":
        lo, hi = torch.zeros_like(i), torch.clamp(i, min=mask.params["prefix_len"] - 1)
    elif mask.kind == "padding":
        lo, hi = _padding(mask.params, q_len, kv_len)
    elif mask.kind == "document":
        got = _document(mask.params, q_len, kv_len)
        if got is None:
            return None
        lo, hi = got
    elif mask.kind == "intervals":  # explicit bounds (tiled_sparse.interval_mask)
        lo, hi = mask.params["lo"].view(1, -1), mask.params["hi"].view(1, -1)
    elif mask.kind == "and":
        parts = [row_intervals(p, q_len, kv_len) for p in mask.parts]
        known = [p for p in parts if p is not None]
        if len(known) < len(parts):
            return None
        lo = torch.maximum(known[0].lo, known[1].lo)  # intersection of two intervals
        hi = torch.minimum(known[0].hi, known[1].hi)
    else:
        return None
    lo, hi = lo.clamp(min=0), hi.clamp(max=kv_len - 1)
    return Intervals(lo, hi)


def classify_intervals(iv: Intervals, r0: Tensor, r1: Tensor, c0: Tensor, c1: Tensor
                       ) -> tuple[Tensor, Tensor]:
    """Exact (nonempty, full) for tiles rows r0..r1 x cols c0..c1 (inclusive), pairwise.

    r0, r1, c0, c1: (N,) int64 (one entry per tile). Returns two (N,) bool tensors, the union
    over Bm (nonempty if any batch row has an entry, full if every batch row is full).
    For monotone intervals: the rows with lo <= c1 form a prefix and the rows with hi >= c0
    a suffix, so "some row reaches the tile" is one searchsorted each (O(N log Lq)).
    """
    ne_all, full_all = None, None
    for b in range(iv.lo.shape[0]):
        keep = iv.nonempty[b]
        rows = keep.nonzero().flatten()  # (R,) non-empty row indices, ascending
        lo, hi = iv.lo[b][rows].contiguous(), iv.hi[b][rows].contiguous()  # monotone, (R,)
        if rows.numel() == 0:
            ne = torch.zeros_like(r0, dtype=torch.bool)
            full = ne.clone()
        else:
            p0 = torch.searchsorted(rows, r0)  # first non-empty row of the tile
            p1 = torch.searchsorted(rows, r1, right=True) - 1  # last one
            a = torch.searchsorted(lo, c1, right=True) - 1  # last row with lo <= c1
            s = torch.searchsorted(hi, c0)  # first row with hi >= c0
            ne = torch.maximum(p0, s) <= torch.minimum(p1, a)
            p0c, p1c = p0.clamp(max=rows.numel() - 1), p1.clamp(min=0)
            all_rows = (p1 - p0 + 1) == (r1 - r0 + 1)
            full = all_rows & (lo[p1c] <= c0) & (hi[p0c] >= c1)
        ne_all = ne if ne_all is None else ne_all | ne
        full_all = full if full_all is None else full_all & full
    assert ne_all is not None and full_all is not None
    return ne_all, full_all & ne_all


def classify_intervals_rowwise(iv: Intervals, rows: Tensor, c0: Tensor, c1: Tensor
                               ) -> tuple[Tensor, Tensor]:
    """Exact tile classes without monotonicity: rows (nI, bq) valid row ids (-1 = padding)
    against key tiles c0, c1 (nK,). Returns (nI, nK) bool pair. O(nI·bq·nK) work."""
    valid = rows >= 0  # (nI, bq)
    r = rows.clamp(min=0)
    ne_all, full_all = None, None
    for b in range(iv.lo.shape[0]):
        lo, hi = iv.lo[b][r].unsqueeze(-1), iv.hi[b][r].unsqueeze(-1)  # (nI, bq, 1)
        hit = (torch.maximum(lo, c0) <= torch.minimum(hi, c1)) & valid.unsqueeze(-1)  # (nI, bq, nK)
        cover = ((lo <= c0) & (hi >= c1)) | ~valid.unsqueeze(-1)
        ne, full = hit.any(1), cover.all(1)
        ne_all = ne if ne_all is None else ne_all | ne
        full_all = full if full_all is None else full_all & full
    assert ne_all is not None and full_all is not None
    return ne_all, full_all & ne_all
