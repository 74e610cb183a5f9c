"""A mask as a disjoint union of pieces that are key intervals once keys are reordered.

Strided, fixed and dilated patterns touch almost every tile below the diagonal with a few
entries each in natural order (the keys (i - j) mod l = 0 are spread over the whole row), so a
block map alone saves little. Each is a disjoint union of parts that become *intervals* once
keys (and queries) are reordered by residue class (Child et al. 2019 implement their kernels
the same way, gathering the strided keys). Softmax over a disjoint union is the lse-weighted
sum of the parts' softmaxes, so a backend runs each part and merges them (backends/tiled/sparse.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnlab.functional.masks.base import Mask
from attnlab.functional.masks.intervals import interval_mask


@dataclass(frozen=True)
class Part:
    mask: Mask  # the part's mask, in the part's coordinates
    q_perm: Tensor | None = None  # the part's query i is original query q_perm[i] (a permutation)
    k_index: Tensor | None = None  # the part's key j is original key k_index[j] (any subset)
    # Residue classes as views: q, k, v (B, H, L, D) run as (B·H, d, L/d, D), class r of
    # d playing the role of a head (row t of class r = position r + t·d). No copies in.
    residue: int | None = None


def _by_residue(pos: Tensor, d: int) -> tuple[Tensor, Tensor, Tensor]:
    """Order positions by (pos mod d, pos): returns the order, each class's start in it and each
    element's rank inside its class, indexed by original position."""
    r = torch.remainder(pos, d)
    order = torch.argsort(r * (int(pos.abs().max()) + 1) * 2 + pos, stable=True)
    counts = torch.bincount(r, minlength=d)
    start = torch.cumsum(counts, 0) - counts  # (d,)
    rank = torch.empty_like(pos)
    rank[order] = torch.arange(pos.numel()) - start[r[order]]
    return order, start, rank


def residue_part(q_len: int, kv_len: int, d: int, off: int, t_lo: int, t_hi: int, name: str) -> Part:
    """Queries and keys reordered by residue mod d of (i + off) and j; query of rank t in class r
    sees the class-r keys of ranks t + t_lo .. t + t_hi."""
    cq = torch.arange(q_len) + off
    q_order, _, _ = _by_residue(cq, d)
    k_order, k_start, _ = _by_residue(torch.arange(kv_len), d)
    k_count = torch.bincount(torch.arange(kv_len) % d, minlength=d)
    cq_sorted = cq[q_order]  # (Lq,) in the part's order
    r = torch.remainder(cq_sorted, d)
    t = torch.div(cq_sorted - r, d, rounding_mode="floor")  # rank of the key j = r + t·d, if any
    lo = (t + t_lo).clamp(min=0)
    hi = torch.minimum(t + t_hi, k_count[r] - 1)
    lo, hi = k_start[r] + lo, k_start[r] + hi
    hi = torch.where(lo > hi, lo - 1, hi)  # empty rows stay empty after the shift
    return Part(interval_mask(lo, hi, name), q_order, k_order)
