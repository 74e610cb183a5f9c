"""Masks whose rows are key intervals: query i may attend exactly keys lo[i]..hi[i].

Causal, sliding window, prefix-LM, padding, packed documents (sorted segment ids) and their
intersections (``&``) are all of this form (their patterns answer ``intervals``). Knowing the
interval of every row is O(Lq) memory and gives the block map exactly and cheaply: a (query
block, key block) tile is empty, full or partial by comparing a few row bounds with the tile's
columns, never by evaluating the Lq x Lk pairs. This is what makes the block map of a 1M-token
sliding window take milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from attnlab.functional.masks.base import Mask, Pattern

BIG = 2**62  # lo of a row that sees nothing (lo > hi)


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


def row_intervals(mask: Mask | None, q_len: int, kv_len: int) -> Intervals | None:
    """The rows of ``mask`` as key intervals (its pattern's answer, clipped to the keys), or None
    when they are not intervals. No mask: every row sees every key."""
    if mask is None:
        i = torch.zeros(1, q_len, dtype=torch.long)
        return Intervals(i, i + kv_len - 1)
    got = mask.pattern.intervals(q_len, kv_len)
    if got is None:
        return None
    lo, hi = got
    return Intervals(lo.clamp(min=0), hi.clamp(max=kv_len - 1))


@dataclass(frozen=True, eq=False)
class ExplicitIntervals(Pattern):
    lo: Tensor  # (Lq,) int64
    hi: Tensor  # (Lq,) int64
    kind: ClassVar[str] = "intervals"

    def intervals(self, q_len: int, kv_len: int) -> tuple[Tensor, Tensor]:
        return self.lo.view(1, -1), self.hi.view(1, -1)

    def span(self, kv_len: int) -> int:
        return max(1, int((self.hi - self.lo + 1).clamp(min=0).float().mean()))


def interval_mask(lo: Tensor, hi: Tensor, name: str) -> Mask:
    """Query i may attend keys lo[i]..hi[i] (inclusive); lo > hi is an empty row. lo, hi: (Lq,).
    The pieces of a decomposed pattern (parts.py) are such masks."""

    def fn(b, h, q, kv, lq, lk):
        qc = q.clamp(0, lo.numel() - 1)
        return (kv >= lo.to(q.device)[qc]) & (kv <= hi.to(q.device)[qc])

    return Mask(fn, name, ExplicitIntervals(lo, hi))


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
