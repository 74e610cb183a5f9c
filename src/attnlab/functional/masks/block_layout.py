"""Masks given by a coarse block layout: any block-sparse layout, and BigBird's.

Query i may attend key j when ``layout[i // bs, j // bs]``. BigBird ITC (Zaheer et al. 2020,
§2 and App. D) builds its layout from a window of neighbouring blocks, global blocks and
seeded random blocks. Tiles aligned with the layout's blocks are classified exactly from a 2-D
prefix sum of the layout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from attnlab.functional.checks import expect_nonneg_int, expect_positive_int
from attnlab.functional.masks.base import Classify, Mask, Pattern
from attnlab.functional.masks.grid import TileClasses, TileGrid


def _rect_counts(layout: Tensor, bs: int, g: TileGrid, i0: int, i1: int) -> tuple[Tensor, Tensor]:
    """Allowed blocks of a coarse ``layout`` (bs-token blocks) under each tile, and tile area
    in layout cells: a 2-D prefix sum answers every tile in O(1)."""
    r0, r1, c0, c1 = g.corners(i0, i1)
    a0, a1, b0, b1 = r0 // bs, r1 // bs, c0 // bs, c1 // bs
    lay = layout[: int(a1.max()) + 1, : int(b1.max()) + 1].long()
    ps = torch.nn.functional.pad(lay.cumsum(0).cumsum(1), (1, 0, 1, 0))  # (nA+1, nB+1)
    cnt = ps[a1 + 1, b1 + 1] - ps[a0, b1 + 1] - ps[a1 + 1, b0] + ps[a0, b0]
    return cnt, (a1 - a0 + 1) * (b1 - b0 + 1)


class BlockLayout(Pattern):
    """A mask read off a coarse (nQB, nKB) block layout; subclasses say where it comes from."""

    block_size: int

    def layout(self, q_len: int, kv_len: int) -> Tensor:
        raise NotImplementedError

    def tiles(self, mask: Mask, g: TileGrid, i0: int, i1: int, classify: Classify) -> TileClasses:
        cnt, area = _rect_counts(self.layout(g.q_len, g.kv_len), self.block_size, g, i0, i1)
        # Exact when tiles align with the layout's blocks; otherwise a tile straddles blocks and
        # "partial" may be conservative. The truncated last block is handled by the block map.
        aligned = g.bq % self.block_size == 0 and g.bk % self.block_size == 0
        return cnt > 0, cnt == area, aligned

    def span(self, kv_len: int) -> int:
        return kv_len

    @property
    def layout_block(self) -> int:
        return self.block_size


@dataclass(frozen=True, eq=False)
class BlockSparse(BlockLayout):
    block_size: int
    table: Tensor  # (nQB, nKB) bool, True = the block may attend
    kind: ClassVar[str] = "block_sparse"

    def layout(self, q_len: int, kv_len: int) -> Tensor:
        return self.table


@dataclass(frozen=True, eq=False)
class BigBird(BlockLayout):
    block_size: int
    make_layout: Callable[[int, int], Tensor]  # (q_len, kv_len) -> (nQB, nKB) bool, cached
    num_window_blocks: int
    num_global_blocks: int
    kind: ClassVar[str] = "bigbird"

    @property
    def needs_lengths(self) -> bool:
        return True  # the number of blocks, hence the random draw, depends on the lengths

    def layout(self, q_len: int, kv_len: int) -> Tensor:
        return self.make_layout(q_len, kv_len)


def block_sparse(layout: Tensor | Sequence[Sequence[bool]], block_size: int) -> Mask:
    """Block-sparse attention: query i may attend key j when ``layout[i // bs, j // bs]``.

    ``layout``: bool (n_q_blocks, n_kv_blocks), True = the block may attend; it must cover the
    sequence lengths it is used with.
    """
    expect_positive_int("block_size", block_size)
    lay = layout if isinstance(layout, Tensor) else torch.as_tensor(layout)
    if lay.dtype != torch.bool or lay.ndim != 2:
        raise ValueError(f"layout: expected a 2-D bool tensor, got {lay.dtype} of shape {tuple(lay.shape)}")

    def fn(b, h, q, kv, lq, lk):
        if lq >= 0 and (lay.shape[0] * block_size < lq or lay.shape[1] * block_size < lk):
            raise ValueError(f"layout: {tuple(lay.shape)} blocks of {block_size} do not cover "
                             f"q_len={lq}, kv_len={lk}")
        return lay.to(q.device)[q // block_size, kv // block_size]

    return Mask(fn, f"block_sparse[{block_size}]", BlockSparse(block_size, lay))


def _random_layout(n_q: int, n_k: int, per_row: int, seed: int, allowed: Tensor) -> Tensor:
    """Seeded random key blocks per query block, drawn from the blocks not already allowed."""
    g = torch.Generator().manual_seed(seed)
    layout = torch.zeros(n_q, n_k, dtype=torch.bool)
    if per_row == 0:
        return layout
    score = torch.rand(n_q, n_k, generator=g).masked_fill(allowed, 2.0)  # taken blocks sort last
    k = min(per_row, n_k)
    pick = score.topk(k, dim=1, largest=False).indices  # (n_q, k)
    layout.scatter_(1, pick, True)
    return layout & ~allowed


def bigbird(block_size: int, num_window_blocks: int = 3, num_global_blocks: int = 2,
            num_random_blocks: int = 3, seed: int = 0) -> Mask:
    """BigBird ITC (Zaheer et al. 2020, §2 and App. D): blocks of ``block_size`` tokens; each
    query block sees its ``num_window_blocks`` neighbouring blocks (centred), the first
    ``num_global_blocks`` blocks (which also see everything), and ``num_random_blocks`` random
    blocks drawn with ``seed`` (the same for every batch element and head)."""
    expect_positive_int("block_size", block_size)
    expect_positive_int("num_window_blocks", num_window_blocks)
    expect_nonneg_int("num_global_blocks", num_global_blocks)
    expect_nonneg_int("num_random_blocks", num_random_blocks)
    if num_window_blocks % 2 == 0:
        raise ValueError(
            f"num_window_blocks: expected an odd number (centred window), got {num_window_blocks}")
    cache: dict[tuple[int, int], Tensor] = {}

    def layout(lq: int, lk: int) -> Tensor:
        nq, nk = -(-lq // block_size), -(-lk // block_size)
        if (nq, nk) not in cache:
            if num_global_blocks > min(nq, nk):
                raise ValueError(f"num_global_blocks: {num_global_blocks} global blocks do not fit "
                                 f"in {min(nq, nk)} blocks of {block_size} tokens")
            bi, bj = torch.arange(nq).view(-1, 1), torch.arange(nk).view(1, -1)
            fixed = ((bi - bj).abs() <= num_window_blocks // 2) | (bi < num_global_blocks) \
                | (bj < num_global_blocks)
            cache[(nq, nk)] = fixed | _random_layout(nq, nk, num_random_blocks, seed, fixed)
        return cache[(nq, nk)]

    def fn(b, h, q, kv, lq, lk):
        lay = layout(lq, lk).to(q.device)
        return lay[q // block_size, kv // block_size]

    pattern = BigBird(block_size, layout, num_window_blocks, num_global_blocks)
    return Mask(fn, f"bigbird[{block_size}]", pattern)
