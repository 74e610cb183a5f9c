"""Masks by position alone, each row one interval of keys: full, causal, sliding window, prefix LM.

Alignment when Lq != Lk (the two conventions PyTorch names ``causal_upper_left`` and
``causal_lower_right``):

- ``top-left``: query i sees keys j <= i. With Lq < Lk the last keys are never seen.
- ``bottom-right``: query i sees keys j <= i + (Lk - Lq), so the last query sees every key.
  This is the right choice for decoding with a KV cache, where the queries are the newest
  Lq positions of a sequence whose Lk keys include the past.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from attnlab.functional.checks import expect_nonneg_int
from attnlab.functional.masks.base import Align, Mask, Pattern, SdpaForm, align_offset, check_align


def _rows(q_len: int) -> Tensor:
    return torch.arange(q_len).view(1, -1)  # (1, Lq)


@dataclass(frozen=True)
class Full(Pattern):
    kind: ClassVar[str] = "full"

    def intervals(self, q_len: int, kv_len: int) -> tuple[Tensor, Tensor]:
        i = _rows(q_len)
        return torch.zeros_like(i), torch.full_like(i, kv_len - 1)

    def span(self, kv_len: int) -> int:
        return kv_len

    def sdpa_form(self, q_len: int, kv_len: int) -> SdpaForm:
        return "full"


@dataclass(frozen=True)
class Causal(Pattern):
    align: Align
    kind: ClassVar[str] = "causal"

    @property
    def needs_lengths(self) -> bool:
        return self.align == "bottom-right"

    def intervals(self, q_len: int, kv_len: int) -> tuple[Tensor, Tensor]:
        i = _rows(q_len)
        return torch.zeros_like(i), i + align_offset(self.align, q_len, kv_len)

    def span(self, kv_len: int) -> int:
        return kv_len

    def sdpa_form(self, q_len: int, kv_len: int) -> SdpaForm | None:
        # SDPA's is_causal is top-left (the same as bottom-right when square). One query under a
        # bottom-right mask (a KV-cache decode step) sees every key: no mask at all.
        if self.align == "top-left" or q_len == kv_len:
            return "causal"
        return "full" if q_len == 1 else None


@dataclass(frozen=True)
class SlidingWindow(Pattern):
    left: int
    right: int
    align: Align
    kind: ClassVar[str] = "sliding_window"

    @property
    def needs_lengths(self) -> bool:
        return self.align == "bottom-right"

    def intervals(self, q_len: int, kv_len: int) -> tuple[Tensor, Tensor]:
        c = _rows(q_len) + align_offset(self.align, q_len, kv_len)
        return c - self.left, c + self.right

    def span(self, kv_len: int) -> int:
        return self.left + self.right + 1


@dataclass(frozen=True)
class PrefixLM(Pattern):
    prefix_len: int
    kind: ClassVar[str] = "prefix_lm"

    def intervals(self, q_len: int, kv_len: int) -> tuple[Tensor, Tensor]:
        i = _rows(q_len)
        return torch.zeros_like(i), torch.clamp(i, min=self.prefix_len - 1)

    def span(self, kv_len: int) -> int:
        return kv_len


def full() -> Mask:
    """Every query may attend every key."""
    return Mask(lambda b, h, q, kv, lq, lk: torch.ones((), dtype=torch.bool, device=q.device)
                .expand(torch.broadcast_shapes(q.shape, kv.shape)), "full", Full())


def causal(align: Align = "top-left") -> Mask:
    """Query i may attend key j when j <= i (top-left) or j <= i + Lk - Lq (bottom-right)."""
    check_align(align)

    def fn(b, h, q, kv, lq, lk):
        return kv <= q + align_offset(align, lq, lk)

    return Mask(fn, f"causal[{align}]", Causal(align))


def sliding_window(left: int, right: int = 0, align: Align = "top-left") -> Mask:
    """Query i may attend keys j with i - left <= j <= i + right (both bounds inclusive).

    ``sliding_window(W, 0)`` is causal local attention over the W previous tokens plus the
    token itself (W + 1 keys); ``sliding_window(D, D)`` is Luong's local-m window [t-D, t+D].
    ``align`` shifts the diagonal as in :func:`causal`.
    """
    expect_nonneg_int("left", left)
    expect_nonneg_int("right", right)
    check_align(align)

    def fn(b, h, q, kv, lq, lk):
        centre = q + align_offset(align, lq, lk)
        return (kv >= centre - left) & (kv <= centre + right)

    return Mask(fn, f"window[-{left},+{right}]", SlidingWindow(left, right, align))


def prefix_lm(prefix_len: int) -> Mask:
    """Prefix LM (T5/UniLM): every query sees the first ``prefix_len`` keys; after that, causal."""
    expect_nonneg_int("prefix_len", prefix_len)
    return Mask(lambda b, h, q, kv, lq, lk: (kv < prefix_len) | (kv <= q),
                f"prefix_lm[{prefix_len}]", PrefixLM(prefix_len))
