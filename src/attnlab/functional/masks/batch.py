"""Masks that differ per batch element: padding (valid lengths) and packed documents.

Both are key intervals per row when the document ids are sorted (packed sequences), so block
maps and pair counts come in closed form; the intervals carry a batch axis (Bm = 1 or B).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from attnlab.functional.checks import as_index_tensor
from attnlab.functional.masks.base import Mask, Pattern
from attnlab.functional.masks.intervals import BIG


def _check_batch(name: str, t: Tensor, b: Tensor) -> None:
    need = int(b.max()) + 1 if b.numel() else 0
    if t.shape[0] < need:
        raise ValueError(f"{name}: expected one entry per batch element ({need}), got {t.shape[0]}")


@dataclass(frozen=True, eq=False)
class Padding(Pattern):
    q_lengths: Tensor | None  # (B,) int64
    k_lengths: Tensor | None  # (B,) int64
    kind: ClassVar[str] = "padding"

    def intervals(self, q_len: int, kv_len: int) -> tuple[Tensor, Tensor]:
        ql, kl = self.q_lengths, self.k_lengths
        bm = max(1 if ql is None else ql.numel(), 1 if kl is None else kl.numel())
        hi = torch.full((bm, q_len), kv_len - 1, dtype=torch.long)  # (Bm, Lq)
        if kl is not None:
            hi = torch.minimum(hi, (kl.view(-1, 1) - 1).expand(bm, q_len))
        lo = torch.zeros(bm, q_len, dtype=torch.long)
        if ql is not None:  # padded query rows see nothing
            rows = torch.arange(q_len).view(1, -1)
            lo = torch.where(rows < ql.view(-1, 1), lo, torch.full_like(lo, BIG))
        return lo, hi

    def span(self, kv_len: int) -> int:
        return kv_len


def _sorted(t: Tensor) -> bool:
    return t.shape[-1] < 2 or bool((t.diff(dim=-1) >= 0).all())


@dataclass(frozen=True, eq=False)
class Document(Pattern):
    q_segments: Tensor  # (B|1, Lq)
    kv_segments: Tensor  # (B|1, Lk)
    kind: ClassVar[str] = "document"

    def intervals(self, q_len: int, kv_len: int) -> tuple[Tensor, Tensor] | None:
        qs, ks = self.q_segments, self.kv_segments
        if qs.shape[1] != q_len or ks.shape[1] != kv_len or not _sorted(ks):
            return None  # unsorted keys: a row's keys are not one interval
        bm = max(qs.shape[0], ks.shape[0])
        qs, ks = qs.expand(bm, -1), ks.expand(bm, -1)
        lo = torch.stack([torch.searchsorted(ks[b].contiguous(), qs[b].contiguous(), right=False)
                          for b in range(bm)])
        hi = torch.stack([torch.searchsorted(ks[b].contiguous(), qs[b].contiguous(), right=True)
                          for b in range(bm)]) - 1
        return lo, hi

    def span(self, kv_len: int) -> int:
        return max(1, kv_len // max(1, int(torch.unique(self.kv_segments).numel())))


def padding(q_lengths: object = None, k_lengths: object = None) -> Mask:
    """Per-batch valid lengths: key j is visible when j < k_lengths[b]; query rows
    i >= q_lengths[b] see nothing (their context is exact zeros)."""
    if q_lengths is None and k_lengths is None:
        raise ValueError("padding: expected q_lengths or k_lengths, got neither")
    ql = None if q_lengths is None else as_index_tensor("q_lengths", q_lengths)
    kl = None if k_lengths is None else as_index_tensor("k_lengths", k_lengths)
    for nm, t in (("q_lengths", ql), ("k_lengths", kl)):
        if t is not None and bool((t < 0).any()):
            raise ValueError(f"{nm}: expected lengths >= 0, got {t.tolist()}")

    def fn(b, h, q, kv, lq, lk):
        ok = torch.ones((), dtype=torch.bool, device=q.device)
        if kl is not None:
            _check_batch("k_lengths", kl, b)
            ok = ok & (kv < kl.to(kv.device)[b])
        if ql is not None:
            _check_batch("q_lengths", ql, b)
            ok = ok & (q < ql.to(q.device)[b])
        return ok

    return Mask(fn, "padding", Padding(ql, kl))


def document(segment_ids: object, kv_segment_ids: object = None) -> Mask:
    """Packed sequences: query i sees key j only inside the same document.

    ``segment_ids``: (L,) or (B, L) integer ids per position; ``kv_segment_ids`` likewise for
    the keys when they differ from the queries (cross attention over packed batches).
    Combine with ``causal()`` for packed causal language modelling.
    """
    qs = as_index_tensor("segment_ids", segment_ids, ndim=(1, 2))
    ks = qs if kv_segment_ids is None else as_index_tensor("kv_segment_ids", kv_segment_ids,
                                                           ndim=(1, 2))
    q2 = qs if qs.ndim == 2 else qs.unsqueeze(0)  # (B or 1, Lq)
    k2 = ks if ks.ndim == 2 else ks.unsqueeze(0)  # (B or 1, Lk)

    def fn(b, h, q, kv, lq, lk):
        if lq >= 0 and (q2.shape[1] != lq or k2.shape[1] != lk):
            raise ValueError(
                f"segment_ids: expected {lq} query and {lk} key positions, "
                f"got {q2.shape[1]} and {k2.shape[1]}"
            )
        bq = b if q2.shape[0] > 1 else torch.zeros_like(b)
        bk = b if k2.shape[0] > 1 else torch.zeros_like(b)
        return q2.to(q.device)[bq, q] == k2.to(kv.device)[bk, kv]

    return Mask(fn, "document", Document(q2, k2))
