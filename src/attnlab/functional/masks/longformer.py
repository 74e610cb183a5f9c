"""Longformer: sliding window + symmetric global tokens (Beltagy et al. 2020, §3.1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from attnlab.functional.checks import expect_nonneg_int
from attnlab.functional.masks.base import Classify, Mask, Pattern
from attnlab.functional.masks.grid import TileClasses, TileGrid


def token_table(name: str, tokens: Sequence[int] | Tensor, seq_len: int | None) -> Tensor:
    """A bool membership table over positions: table[i] is True when i is in ``tokens``. On the
    CPU: a mask_mod moves it to its indices' device (:func:`_lookup`)."""
    t = torch.as_tensor(tokens if not isinstance(tokens, Tensor) else tokens.tolist(), dtype=torch.long,
                        device="cpu")
    if t.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D list of token indices, got shape {tuple(t.shape)}")
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"{name}: expected indices >= 0, got {t.tolist()}")
    if seq_len is not None and t.numel() and int(t.max()) >= seq_len:
        raise ValueError(f"{name}: index {int(t.max())} out of range for seq_len={seq_len}")
    table = torch.zeros(int(t.max()) + 1 if t.numel() else 0, dtype=torch.bool, device="cpu")
    table[t] = True
    return table


def _lookup(table: Tensor, idx: Tensor) -> Tensor:
    """table[idx] with indices past the table giving False (vectorised membership test)."""
    if table.numel() == 0:
        return torch.zeros_like(idx, dtype=torch.bool)
    inside = idx < table.numel()
    return table.to(idx.device)[idx.clamp(max=table.numel() - 1)] & inside


def _check_range(name: str, table: Tensor, lq: int, lk: int) -> None:
    # Lengths are known here (-1 when called as a bare mask_mod): indices must exist.
    if lq >= 0 and table.numel() > min(lq, lk):
        raise ValueError(f"{name}: index {table.numel() - 1} out of range for q_len={lq}, kv_len={lk}")


@dataclass(frozen=True, eq=False)
class Longformer(Pattern):
    window: int
    global_tokens: Tensor  # (n,) bool membership table
    kind: ClassVar[str] = "longformer"

    def tiles(self, mask: Mask, g: TileGrid, i0: int, i1: int, classify: Classify) -> TileClasses:
        r0, r1, c0, c1 = g.corners(i0, i1)
        w, table = self.window, self.global_tokens
        win_ne = torch.maximum(r0 - c1, torch.tensor(-w)) <= torch.minimum(r1 - c0, torch.tensor(w))
        win_full = (r0 - c1 >= -w) & (r1 - c0 <= w)
        ps = torch.nn.functional.pad(table.long().cumsum(0), (1, 0))  # prefix counts of global ids

        def n_glob(a: Tensor, b: Tensor) -> Tensor:
            n = table.numel()
            return ps[(b + 1).clamp(max=n)] - ps[a.clamp(max=n)]

        gr, gc = n_glob(r0, r1), n_glob(c0, c1)
        ne = win_ne | (gr > 0) | (gc > 0)
        full = win_full | (gr == r1 - r0 + 1) | (gc == c1 - c0 + 1)
        return ne, full, False

    def span(self, kv_len: int) -> int:
        return 2 * self.window + 1


def longformer(window: int, global_tokens: Sequence[int] | Tensor = (), *,
               seq_len: int | None = None) -> Mask:
    """Sliding window of ``window`` keys on each side, plus global tokens that see and are seen by
    every position (Beltagy et al. 2020, §3.1: "symmetric" global attention).

    Indices in ``global_tokens`` are checked against ``seq_len`` when given, and against the
    real lengths whenever the mask is evaluated. Combine with ``causal()`` for decoders.
    """
    expect_nonneg_int("window", window)
    table = token_table("global_tokens", global_tokens, seq_len)

    def fn(b, h, q, kv, lq, lk):
        _check_range("global_tokens", table, lq, lk)
        return ((q - kv).abs() <= window) | _lookup(table, q) | _lookup(table, kv)

    return Mask(fn, f"longformer[{window},g={int(table.sum())}]", Longformer(window, table))
