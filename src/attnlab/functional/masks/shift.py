"""A window onto a bigger mask: rows [q_offset, q_offset + q_len) and keys [kv_offset, ...) of
a mask over (q_total, kv_total) positions.

Context-parallel attention (attnlab.distributed) runs one shard of queries against one shard
of keys at a time; masks and score_mods must still see global positions. The window keeps the
interval structure of the mask it looks into (a shifted interval is an interval), so the block
maps of a causal, windowed or document mask stay analytic shard by shard; other patterns are
evaluated on the shard pair (exact, O(q_len·kv_len) predicate calls once per shape).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from attnlab.functional.checks import expect_nonneg_int, expect_positive_int
from attnlab.functional.masks.base import Mask, Pattern


@dataclass(frozen=True, eq=False)
class Shifted(Pattern):
    inner: Mask
    q_offset: int
    kv_offset: int
    q_total: int
    kv_total: int
    kind: ClassVar[str] = "shifted"

    def intervals(self, q_len: int, kv_len: int) -> tuple[Tensor, Tensor] | None:
        got = self.inner.pattern.intervals(self.q_total, self.kv_total)
        if got is None:
            return None
        lo, hi = got  # (Bm, q_total) in global key positions
        rows = slice(self.q_offset, self.q_offset + q_len)
        return lo[:, rows] - self.kv_offset, hi[:, rows] - self.kv_offset

    def span(self, kv_len: int) -> int:
        return min(kv_len, self.inner.pattern.span(self.kv_total))


def shifted(mask: Mask, q_offset: int, kv_offset: int, q_total: int, kv_total: int) -> Mask:
    """``mask`` seen from a block of rows starting at global query ``q_offset`` and keys starting
    at global key ``kv_offset``, in a sequence of ``q_total`` queries and ``kv_total`` keys."""
    expect_nonneg_int("q_offset", q_offset)
    expect_nonneg_int("kv_offset", kv_offset)
    expect_positive_int("q_total", q_total)
    expect_positive_int("kv_total", kv_total)

    def fn(b, h, q, kv, lq, lk):
        return mask.evaluate(b, h, q + q_offset, kv + kv_offset, q_total, kv_total)

    name = f"{mask.name}[q+{q_offset}, kv+{kv_offset}]"
    return Mask(fn, name, Shifted(mask, q_offset, kv_offset, q_total, kv_total))
