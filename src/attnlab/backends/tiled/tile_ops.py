"""What the tiled forward (forward.py) and backward (backward.py) passes share: where a tile's
tensors live and how one head of it is addressed.

A batched tile covers ``nb`` query blocks of ``bq`` rows, each against its own band of ``w`` key
blocks of ``bk`` keys, for every batch element and head at once: scores are (B, H, nb, bq, w·bk)
(plan.py builds them; gemm.py holds the products and the key/value bands). Here: the inputs
padded to whole blocks, a chunk's query blocks as views, the allowed-mask of a tile's partial
runs, one head of a batched tile, key/value bands cleaned of non-finite values, and the scratch
buffers a worker reuses for all its tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.backends.tiled.plan import Plan, QueryChunk, Segment
from attnlab.backends.tiled.tiles import TileContext

NEG_INF = float("-inf")


@dataclass
class Padded:
    """q, k, v padded to whole blocks; k/v expanded to the query heads (GQA), except for the
    fused forward, which reads the Hkv shared heads in place."""

    q: Tensor  # (B, H, nQB·bq, D)
    k: Tensor  # (B, H|Hkv, nKB·bk, D)
    v: Tensor  # (B, H|Hkv, nKB·bk, Dv)


def pad_rows(x: Tensor, rows: int) -> Tensor:
    """x (B, H, L, D) padded with zero rows to ``rows``. Without padding a strided view (rows
    of a residue class: row stride d·D) is kept as it is: bands and GEMMs read it in place."""
    if rows > x.shape[2]:
        return F.pad(x, (0, 0, 0, rows - x.shape[2])).contiguous()
    return x if x.stride(-1) == 1 else x.contiguous()


def q_view(x: Tensor, chunk: QueryChunk, bq: int) -> Tensor:
    """(B, H, nQB·bq, ...) -> the chunk's query blocks (B, H, nb, bq, ...), a view when contiguous."""
    B, H = x.shape[:2]
    xb = x.view(B, H, -1, bq, *x.shape[3:])  # (B, H, nQB·bq, ...) -> (B, H, nQB, bq, ...)
    if chunk.q_start is not None:
        return xb[:, :, chunk.q_start: chunk.q_start + chunk.q_blocks.numel()]
    return xb.index_select(2, chunk.q_blocks)


def q_write(dst: Tensor, val: Tensor, chunk: QueryChunk, bq: int) -> None:
    """dst (B, H, nQB·bq, ...)'s rows of the chunk <- val (B, H, nb, bq, ...)."""
    B, H = dst.shape[:2]
    db = dst.view(B, H, -1, bq, *dst.shape[3:])  # (B, H, nQB·bq, ...) -> (B, H, nQB, bq, ...)
    if chunk.q_start is not None:
        db[:, :, chunk.q_start: chunk.q_start + chunk.q_blocks.numel()] = val
    else:
        db.index_copy_(2, chunk.q_blocks, val)


def tile_masks(tc: TileContext, chunk: QueryChunk, seg: Segment) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Index tensors of the tile, q (1, 1, nb, bq, 1) and kv (1, 1, nb, 1, w·bk), and the
    allowed-mask (B|1, H|1, nb, bq, run·bk) of each partial run."""
    qi, ki = tc.q_index(chunk.q_blocks), tc.kv_index(seg.k_blocks)
    oks = [tc.allowed(tc.b5, tc.h5, qi, ki[..., p0 * tc.bk: p1 * tc.bk]) for p0, p1 in seg.masked]
    return qi, ki, oks


def head_view(t: Tensor, i: int | None, j: int | None) -> Tensor:
    """Batch i, head j of a (B|1, H|1, ...) tensor as (1, 1, ...) (all of it when i is None)."""
    if i is None or j is None:
        return t
    bi, hj = min(i, t.shape[0] - 1), min(j, t.shape[1] - 1)
    return t[bi: bi + 1, hj: hj + 1]


def head_index(tc: TileContext, qi: Tensor, ki: Tensor, i: int | None, j: int | None
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The (b, h, q, kv) index tensors a score_mod sees on batch i, head j of a tile (all when
    i is None)."""
    if i is None or j is None:
        return tc.b5, tc.h5, qi, ki
    return tc.b5[i: i + 1], tc.h5[:, j: j + 1], qi, ki


def clean_band(x: Tensor, oks: list[Tensor], seg: Segment, bk: int) -> Tensor:
    """Zero keys/values that no row of the tile may see, so that inf/NaN stored there cannot
    reach the output through 0·inf (only used when k or v hold non-finite values)."""
    x = x.clone()
    for (p0, p1), ok in zip(seg.masked, oks, strict=True):
        used = ok.any(-2).unsqueeze(-1)  # (B|1, H|1, nb, bq, run·bk) -> (B|1, H|1, nb, run·bk, 1)
        part = x[..., p0 * bk: p1 * bk, :]
        x[..., p0 * bk: p1 * bk, :] = torch.where(used, part, torch.zeros((), dtype=x.dtype))
    return x


@dataclass(frozen=True)
class Scratch:
    """One worker's tile buffers, reused for all its tiles: a fresh multi-MB tensor is
    page-faulted in on every allocation, which costs as much as the softmax itself."""

    scores: Tensor | None  # S / P of a plain-op tile, all heads (the fused op keeps its own blocks)
    grads: Tensor | None  # dP / dS of a plain-op backward tile
    mask: Tensor | None  # the additive mask of a fused tile
    k: Tensor | None  # gathered (non-strided) key bands
    v: Tensor | None  # gathered value bands


def scratch(x: Padded, plan: Plan, *, fused: bool, backward: bool = False) -> Scratch:
    B, H = x.q.shape[:2]
    tile = plan.max_tiles() * plan.bq * plan.bk  # score elements of the biggest tile, one head
    gathered = plan.max_tiles(gathered=True) * B * H * plan.bk  # rows of the biggest gathered band
    return Scratch(
        scores=None if fused else x.q.new_empty(tile * B * H),
        grads=x.q.new_empty(tile * B * H) if backward and not fused else None,
        mask=x.q.new_empty(tile) if fused else None,
        k=x.k.new_empty(gathered * x.k.shape[-1]) if gathered else None,
        v=x.v.new_empty(gathered * x.v.shape[-1]) if gathered else None,
    )


def score_tile(buf: Tensor | None, qh: Tensor, kh: Tensor) -> Tensor:
    """A (b, h, nb, bq, w·bk) view of ``buf`` for the scores of qh (b, h, nb, bq, D) against
    kh (b, h, nb, w·bk, D)."""
    assert buf is not None  # allocated whenever the tiles are not fused
    shape = (*qh.shape[:4], kh.shape[3])
    return buf[: math.prod(shape)].view(shape)  # (n,) -> (b, h, nb, bq, w·bk)
