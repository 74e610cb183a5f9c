"""The two factorised patterns of the Sparse Transformer (Child et al. 2019, §4.2).

- strided: A(1)_i = {max(0, i - l), ..., i} and A(2)_i = {j : (i - j) mod l = 0}, causal;
- fixed:   A(1)_i = {j : floor(j/l) = floor(i/l)} (same block) and
           A(2)_i = {j : j mod l in {l - c, ..., l - 1}} (the last c "summary" keys per block).

Each is merged into one mask. Tiles are classified from their corners; for the kernels each
splits into a few pieces that are intervals once keys are ordered by residue class (parts.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from attnlab.functional.checks import expect_positive_int
from attnlab.functional.masks.base import Classify, Mask, Pattern
from attnlab.functional.masks.grid import TileClasses, TileGrid, any_multiple
from attnlab.functional.masks.intervals import interval_mask
from attnlab.functional.masks.parts import Part, residue_part


@dataclass(frozen=True)
class Strided(Pattern):
    stride: int
    kind: ClassVar[str] = "sparse_strided"

    def tiles(self, mask: Mask, g: TileGrid, i0: int, i1: int, classify: Classify) -> TileClasses:
        # d = q - kv: allowed when d >= 0 and (d <= l or d % l == 0)
        r0, r1, c0, c1 = g.corners(i0, i1)
        dlo, dhi, s = r0 - c1, r1 - c0, self.stride
        lo = dlo.clamp(min=0)
        ne = (lo <= dhi) & ((lo <= s) | any_multiple(lo, dhi, s))
        full = (dlo >= 0) & ((dhi <= s) | (s == 1))
        return ne, full, True

    def span(self, kv_len: int) -> int:
        return self.stride

    def parts(self, q_len: int, kv_len: int, *, views: bool) -> list[Part]:
        l, i = self.stride, torch.arange(q_len)
        window = interval_mask((i - l).clamp(min=0), i.clamp(max=kv_len - 1), "strided-window")
        # Far part: j = i - m·l, m >= 2, i.e. ranks t' <= t - 2 of i's class.
        if views and q_len % l == 0 and kv_len % l == 0:
            t = torch.arange(q_len // l)
            far = interval_mask(torch.zeros_like(t), (t - 2).clamp(max=kv_len // l - 1), "strided-far")
            return [Part(window), Part(far, residue=l)]
        return [Part(window), residue_part(q_len, kv_len, l, 0, -(10**18), -2, "strided-far")]


def _summary_count(x: Tensor, stride: int, summary: int) -> Tensor:
    """#{j in [0, x] : j mod stride >= stride - summary} (0 for x < 0)."""
    n = (x + 1).clamp(min=0)
    return (n // stride) * summary + ((n % stride) - (stride - summary)).clamp(min=0)


@dataclass(frozen=True)
class Fixed(Pattern):
    stride: int
    summary: int
    causal: bool
    kind: ClassVar[str] = "sparse_fixed"

    def tiles(self, mask: Mask, g: TileGrid, i0: int, i1: int, classify: Classify) -> TileClasses:
        r0, r1, c0, c1 = g.corners(i0, i1)
        s, c, causal = self.stride, self.summary, self.causal
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

    def span(self, kv_len: int) -> int:
        return self.stride

    def parts(self, q_len: int, kv_len: int, *, views: bool) -> list[Part]:
        l, c = self.stride, self.summary
        i = torch.arange(q_len)
        own = (i // l) * l
        hi = (i if self.causal else own + l - 1).clamp(max=kv_len - 1)
        parts = [Part(interval_mask(own.clamp(max=kv_len), hi, "fixed-own"))]
        j = torch.arange(kv_len)
        summary = j[j % l >= l - c]  # (S,) the summary keys, in order
        if summary.numel():
            blocks_before = torch.searchsorted(summary, own)  # summary keys in earlier blocks
            parts.append(Part(interval_mask(torch.zeros_like(i), blocks_before - 1, "fixed-summary"),
                              None, summary))
            if not self.causal:  # summary keys of later blocks: a suffix
                after = torch.searchsorted(summary, own + l)
                parts.append(Part(interval_mask(after, torch.full_like(i, summary.numel() - 1),
                                                "fixed-summary-after"), None, summary))
        return parts


def sparse_transformer_strided(stride: int) -> Mask:
    """Child et al. 2019, §4.2 "strided": A(1)_i = {max(0, i - l), ..., i} and
    A(2)_i = {j : (i - j) mod l = 0}; the union, causal (j <= i). Stride l ~ sqrt(n)."""
    expect_positive_int("stride", stride)

    def fn(b, h, q, kv, lq, lk):
        d = q - kv
        return (d >= 0) & ((d <= stride) | (d % stride == 0))

    return Mask(fn, f"strided[{stride}]", Strided(stride))


def sparse_transformer_fixed(stride: int, summary: int = 1, *, causal: bool = True) -> Mask:
    """Child et al. 2019, §4.2 "fixed": A(1)_i = {j : floor(j/l) = floor(i/l)} (same block) and
    A(2)_i = {j : j mod l in {l - c, ..., l - 1}} (the last c "summary" keys of every block);
    their union, causal unless ``causal=False``."""
    expect_positive_int("stride", stride)
    expect_positive_int("summary", summary)
    if summary > stride:
        raise ValueError(f"summary: expected at most stride={stride}, got {summary}")

    def fn(b, h, q, kv, lq, lk):
        ok = (q // stride == kv // stride) | (kv % stride >= stride - summary)
        return ok & (kv <= q) if causal else ok

    return Mask(fn, f"fixed[{stride},c={summary}]", Fixed(stride, summary, causal))
