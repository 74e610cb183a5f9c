"""Longformer's dilated sliding window (Beltagy et al. 2020, §3.1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from attnlab.functional.checks import expect_nonneg_int, expect_positive_int
from attnlab.functional.masks.band import sliding_window
from attnlab.functional.masks.base import Align, Classify, Mask, Pattern, align_offset, check_align
from attnlab.functional.masks.grid import TileClasses, TileGrid, any_multiple
from attnlab.functional.masks.parts import Part, residue_part


@dataclass(frozen=True)
class Dilated(Pattern):
    left: int
    right: int
    dilation: int
    align: Align
    kind: ClassVar[str] = "dilated_sliding_window"

    @property
    def needs_lengths(self) -> bool:
        return self.align == "bottom-right"

    def tiles(self, mask: Mask, g: TileGrid, i0: int, i1: int, classify: Classify) -> TileClasses:
        # d = (q + offset) - kv takes every value in [dlo, dhi] inside a tile (grid.py)
        r0, r1, c0, c1 = g.corners(i0, i1)
        off = align_offset(self.align, g.q_len, g.kv_len)
        dlo, dhi = r0 + off - c1, r1 + off - c0  # (nI, nK)
        lo = torch.maximum(dlo, torch.tensor(-self.right * self.dilation))
        hi = torch.minimum(dhi, torch.tensor(self.left * self.dilation))
        ne = (lo <= hi) & any_multiple(lo, hi, self.dilation)
        full = (dlo >= -self.right) & (dhi <= self.left) & (self.dilation == 1)
        return ne, full, True

    def span(self, kv_len: int) -> int:
        return (self.left + self.right) * self.dilation + 1

    def parts(self, q_len: int, kv_len: int, *, views: bool) -> list[Part] | None:
        d = self.dilation
        if d == 1:
            return None
        off = align_offset(self.align, q_len, kv_len)
        if views and off == 0 and q_len % d == 0 and kv_len % d == 0:
            # Query i = r + t·d sees keys r + t'·d, -right <= t - t' <= left: a plain sliding
            # window inside each class.
            return [Part(sliding_window(self.left, self.right), residue=d)]
        # Reordering by gathers costs about what dilation 2 wastes in natural order (measured).
        if d > 2:
            # key j = r + t'·d with r = (i + off) mod d; allowed: -right <= t - t' <= left.
            return [residue_part(q_len, kv_len, d, off, -self.left, self.right, "dilated")]
        return None


def dilated_sliding_window(left: int, right: int = 0, dilation: int = 1,
                           align: Align = "top-left") -> Mask:
    """Query i sees keys j = i - t·dilation for t in [-right, left] (Longformer's dilated window:
    the receptive field grows by ``dilation`` with no extra keys). ``dilation=1`` is
    :func:`~attnlab.functional.masks.sliding_window`."""
    expect_nonneg_int("left", left)
    expect_nonneg_int("right", right)
    expect_positive_int("dilation", dilation)
    check_align(align)

    def fn(b, h, q, kv, lq, lk):
        d = q + align_offset(align, lq, lk) - kv  # how far the key lies in the past
        return (d >= -right * dilation) & (d <= left * dilation) & (d % dilation == 0)

    return Mask(fn, f"dilated[-{left},+{right}]x{dilation}", Dilated(left, right, dilation, align))
