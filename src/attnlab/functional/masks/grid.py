"""Tiles of the score matrix, as the structure answers of a :class:`~.base.Pattern` see them.

A tile covers query rows r0..r1 and key columns c0..c1 (inclusive), so the differences
d = i - j inside it take every value in [r0 - c1, r1 - c0]: patterns defined by d (windows,
dilation, strides) are classified exactly with integer arithmetic on the tile corners.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# (nonempty, full, exact): (nI, nK) bool each. "exact" False: a tile called partial may really
# be empty or full (costs time, never correctness).
TileClasses = tuple[Tensor, Tensor, bool]


class Blocks:
    """Block counts of bq x bk tiles over a (q_len, kv_len) matrix (the last ones may be short)."""

    q_len: int
    kv_len: int
    bq: int
    bk: int

    @property
    def n_q_blocks(self) -> int:
        return -(-self.q_len // self.bq)

    @property
    def n_kv_blocks(self) -> int:
        return -(-self.kv_len // self.bk)


@dataclass(frozen=True)
class TileGrid(Blocks):
    """bq x bk tiles over a (q_len, kv_len) score matrix, for ``batch`` x ``heads`` of them."""

    q_len: int
    kv_len: int
    bq: int
    bk: int
    batch: int
    heads: int

    def corners(self, i0: int, i1: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Inclusive tile bounds of query blocks i0..i1-1: r0, r1 (nI, 1) and c0, c1 (1, nK)."""
        r0 = torch.arange(i0, i1).view(-1, 1) * self.bq
        c0 = torch.arange(self.n_kv_blocks).view(1, -1) * self.bk
        return r0, (r0 + self.bq).clamp(max=self.q_len) - 1, c0, (c0 + self.bk).clamp(max=self.kv_len) - 1


def any_multiple(lo: Tensor, hi: Tensor, m: int) -> Tensor:
    """Is there a multiple of m in [lo, hi]?"""
    return torch.div(hi, m, rounding_mode="floor") * m >= lo
