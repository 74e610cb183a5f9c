"""Score modifications: ``score_mod(score, b, h, q_idx, kv_idx) -> score``.

The signature is FlexAttention's: it is applied elementwise to the pre-softmax scores with
broadcastable index tensors, so each mod below is vectorised. Compose with :func:`compose`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from attnlab.functional.checks import expect_positive_int, expect_tensor

ScoreMod = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


def alibi_slopes(num_heads: int) -> Tensor:
    """Per-head ALiBi slopes (Press et al. 2022, §3): the geometric sequence 2^(-8i/n),
    i = 1..n, for n a power of two; otherwise the first ``2^floor(log2 n)`` of those plus
    every other slope of the sequence for twice that power (the paper's reference code)."""
    expect_positive_int("num_heads", num_heads)

    def pow2(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        s = pow2(num_heads)
    else:
        p = 2 ** math.floor(math.log2(num_heads))
        s = pow2(p) + pow2(2 * p)[0::2][: num_heads - p]
    return torch.tensor(s, dtype=torch.float64)


def alibi(num_heads: int, *, symmetric: bool = False) -> ScoreMod:
    """ALiBi bias: score + slope_h · (kv - q) (causal form: penalises distance into the past).

    ``symmetric=True`` uses -slope_h · |q - kv| for bidirectional encoders.
    """
    slopes = alibi_slopes(num_heads)

    def mod(score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        s = slopes.to(score.dtype).to(score.device)[h]
        dist = -(q - kv).abs() if symmetric else (kv - q)
        return score + s * dist.to(score.dtype)

    mod.__name__ = f"alibi[{num_heads}]"
    return mod


def softcap(cap: float) -> ScoreMod:
    """Soft-capping (Gemma 2): cap · tanh(score / cap) keeps scores in (-cap, cap) smoothly."""
    if not isinstance(cap, (int, float)) or not cap > 0:
        raise ValueError(f"cap: expected a positive number, got {cap!r}")

    def mod(score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return cap * torch.tanh(score / cap)

    mod.__name__ = f"softcap[{cap}]"
    return mod


def temperature(t: float) -> ScoreMod:
    """score / t: t > 1 flattens the distribution, t < 1 sharpens it."""
    if not isinstance(t, (int, float)) or not t > 0:
        raise ValueError(f"t: expected a positive number, got {t!r}")

    def mod(score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return score / t

    mod.__name__ = f"temperature[{t}]"
    return mod


def relative_position_bias(table: Tensor, max_distance: int) -> ScoreMod:
    """Learned relative position bias (Shaw et al. 2018; T5-style without buckets):
    score + table[h, clip(kv - q, -max_distance, max_distance) + max_distance].

    table: (H, 2 * max_distance + 1). Gradients flow into ``table``.
    """
    expect_tensor("table", table, ndim=2, floating=True)
    expect_positive_int("max_distance", max_distance)
    if table.shape[1] != 2 * max_distance + 1:
        raise ValueError(
            f"table: expected shape (H, {2 * max_distance + 1}) for max_distance={max_distance}, "
            f"got {tuple(table.shape)}"
        )

    def mod(score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        if int(h.max()) >= table.shape[0]:
            raise ValueError(f"table: expected at least {int(h.max()) + 1} heads, got {table.shape[0]}")
        rel = (kv - q).clamp(-max_distance, max_distance) + max_distance
        return score + table[h, rel].to(score.dtype)

    mod.__name__ = "relative_position_bias"
    return mod


def compose(*mods: ScoreMod) -> ScoreMod:
    """Apply score mods left to right."""

    def mod(score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        for m in mods:
            score = m(score, b, h, q, kv)
        return score

    mod.__name__ = " ∘ ".join(getattr(m, "__name__", "score_mod") for m in mods)
    return mod


class KeyBias:
    """``score + table[b, h, kv]``: a bias per (batch row, head, key) that does not depend on
    the query — an attention knockout (-inf: the key is removed, Geva et al. 2023) or PASTA's
    log(alpha) on the keys outside an emphasised span (Zhang et al. 2023, eq. 2), per row of a
    batch. Being query-free, it is a mask: :func:`attnlab.attention` folds it into the mask
    (-inf entries as masked keys, finite ones as an additive bias), so fused kernels (SDPA) run
    it instead of the reference materialising every score for a score_mod.

    ``table``: (B or 1, H or 1, n) float with n >= the number of keys (the columns past Lk are
    unused: one table serves every step of a decode loop); entries finite or -inf.
    """

    def __init__(self, table: Tensor, name: str = "key_bias") -> None:
        expect_tensor("table", table, ndim=3, floating=True)
        if bool(torch.isnan(table).any()) or bool((table == float("inf")).any()):
            raise ValueError("table: expected finite entries or -inf (a removed key), got NaN/+inf")
        self.table = table  # (B|1, H|1, n)
        self.__name__ = name

    def dense(self, shape: tuple[int, int, int, int]) -> Tensor:
        """The table for a call of ``shape`` (B, H, Lq, Lk): (B|1, H|1, 1, Lk)."""
        B, H, _, Lk = shape
        tb, th, n = self.table.shape
        if tb not in (1, B) or th not in (1, H) or n < Lk:
            raise ValueError(f"{self.__name__}: expected a table of shape (1 or B={B}, 1 or H={H}, "
                             f">= Lk={Lk}), got {tuple(self.table.shape)}")
        return self.table[:, :, None, :Lk]

    def __call__(self, score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        t = self.dense(tuple(score.shape))  # type: ignore[arg-type]
        return score + t.to(score.dtype)  # (B, H, Lq, Lk)
