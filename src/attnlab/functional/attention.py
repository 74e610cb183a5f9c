"""Reference attention: softmax(score_mod(Q·Kᵀ · scale) + mask) · V, in plain PyTorch.

This is the eager reference that every other backend is checked against. It is written for
clarity, materialises the (B, H, Lq, Lk) score matrix, and always returns weights and lse.

Half-precision inputs (float16, bfloat16) are computed in float32 from the scores to the
context, as SDPA's math path does: a float16 q·k overflows at 65504 before any scale is
applied, and bfloat16 scores in the hundreds carry errors of ~1 (its spacing there is 2),
which the softmax exponentiates. Context and weights come back in the input dtype; lse stays
float32 (the log-sum-exp of float32 scores, as flash kernels return it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import overload

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.functional.checks import expect_same, expect_tensor
from attnlab.functional.masks import index_grids
from attnlab.functional.scores import default_scale

ScoreMod = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


@dataclass
class AttentionOutput:
    """What attention computes. ``weights`` are post-softmax, before dropout."""

    context: Tensor  # (B, H, Lq, Dv)
    weights: Tensor | None = None  # (B, H, Lq, Lk)
    lse: Tensor | None = None  # (B, H, Lq): log Σ_j exp(score_ij); -inf on fully masked rows

    def __iter__(self):  # allows `context, weights, lse = attention(...)`
        return iter((self.context, self.weights, self.lse))


@dataclass(frozen=True)
class QKV:
    """q, k, v as 4-D tensors plus what it takes to give results back in the caller's shape."""

    q: Tensor  # (B, Hq, Lq, Dh)
    k: Tensor  # (B, Hkv, Lk, Dh)
    v: Tensor  # (B, Hkv, Lk, Dv)
    input_ndim: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(B, Hq, Lq, Lk): the shape of the scores."""
        return (self.q.shape[0], self.q.shape[1], self.q.shape[2], self.k.shape[2])

    @overload
    def restore(self, x: Tensor) -> Tensor: ...
    @overload
    def restore(self, x: Tensor | None) -> Tensor | None: ...

    def restore(self, x: Tensor | None) -> Tensor | None:
        """Drop the leading axes that were added for 2-D / 3-D inputs."""
        if x is None:
            return None
        return x.reshape(x.shape[4 - self.input_ndim:]) if self.input_ndim < 4 else x


def validate_qkv(q: object, k: object, v: object) -> QKV:
    """Check shapes, dtypes and devices; accept (L, D), (H, L, D) or (B, H, L, D)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        expect_tensor(name, t, ndim=(2, 3, 4), floating=True)
    assert isinstance(q, Tensor) and isinstance(k, Tensor) and isinstance(v, Tensor)
    for name, t in (("k", k), ("v", v)):
        if t.ndim != q.ndim:
            raise ValueError(
                f"{name}: expected {q.ndim} dims like q {tuple(q.shape)}, got shape {tuple(t.shape)}")
        expect_same(name, t, "q", q)
    if q.ndim == 4:  # the common case (every module's call): no reshape to make
        q4, k4, v4 = q, k, v
    else:
        pad = (1,) * (4 - q.ndim)
        q4, k4, v4 = (t.reshape(pad + tuple(t.shape)) for t in (q, k, v))  # (B, H, L, D)
    if k4.shape[-1] != q4.shape[-1]:
        raise ValueError(f"k: expected head dim {q4.shape[-1]} (as q), got shape {tuple(k.shape)}")
    if v4.shape[:3] != k4.shape[:3]:
        raise ValueError(f"v: expected leading dims {tuple(k.shape[:-1])} (as k), got shape {tuple(v.shape)}")
    if k4.shape[0] != q4.shape[0]:
        raise ValueError(f"k: expected batch {q4.shape[0]} (as q), got shape {tuple(k.shape)}")
    hq, hkv = q4.shape[1], k4.shape[1]
    if hkv == 0 or hq % hkv:
        raise ValueError(
            f"k: expected a number of heads that divides q's {hq} (GQA), got {hkv} (shape {tuple(k.shape)})"
        )
    if 0 in (q4.shape[2], k4.shape[2], q4.shape[3]):
        raise ValueError(
            f"q/k: expected non-empty sequences and head dim, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    return QKV(q4, k4, v4, q.ndim)


def expand_kv(x: Tensor, q_heads: int) -> Tensor:
    """Share each K/V head across ``q_heads / Hkv`` consecutive query heads (GQA/MQA), as
    SDPA's ``enable_gqa`` does: query head h reads kv head h // (Hq / Hkv)."""
    groups = q_heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)  # (B, Hq, Lk, D)


HALF = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the reference computes scores, softmax and context in: float32 for half inputs."""
    return torch.float32 if dtype in HALF else dtype


def apply_score_mod(scores: Tensor, score_mod: ScoreMod) -> Tensor:
    B, H, Lq, Lk = scores.shape
    b, h, q, kv = index_grids(B, H, Lq, Lk, scores.device)
    out = score_mod(scores, b, h, q, kv)
    if not isinstance(out, Tensor) or out.shape != scores.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"score_mod: expected it to return scores of shape {tuple(scores.shape)}, got {got}")
    return out


def reference_attention(
    q: Tensor,  # (B, Hq, Lq, Dh)
    k: Tensor,  # (B, Hkv, Lk, Dh)
    v: Tensor,  # (B, Hkv, Lk, Dv)
    *,
    allowed: Tensor | None = None,  # bool, broadcastable to (B, Hq, Lq, Lk); True = may attend
    bias: Tensor | None = None,  # float, broadcastable to (B, Hq, Lq, Lk)
    score_mod: ScoreMod | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    training: bool = False,
    v_finite: bool = False,
) -> AttentionOutput:
    """Vaswani et al. 2017, eq. (1), with masks, score mods, GQA and safe empty rows.

    Half-precision inputs are computed in float32 (module docstring); the gradients flow back
    through the casts, so they are float32 computations rounded once to the input dtype.
    ``v_finite``: ``v`` is known to hold no NaN/inf (dispatch checked it), so the values of keys
    no query sees need not be zeroed."""
    from attnlab.functional.softmax import masked_softmax  # local: keeps import graph flat

    out_dtype, acc = v.dtype, compute_dtype(q.dtype)
    B, hq, Lq, Dh = q.shape
    hkv, Lk = k.shape[1], k.shape[2]
    g = hq // hkv
    # GQA as one matmul per K/V head over its g query heads, stacked as rows (query head h reads
    # K/V head h // g, as expand_kv): no copies of K and V expanded to Hq heads. Those copies and
    # the zeroing below made a 16-row decode step's call with weights ~9x slower (3 ms vs 0.3 ms).
    qg, k, v = q.to(acc).reshape(B, hkv, g * Lq, Dh), k.to(acc), v.to(acc)  # (B, Hkv, g·Lq, Dh)
    s = default_scale(Dh) if scale is None else scale
    scores = (qg @ k.transpose(-2, -1)).view(B, hq, Lq, Lk) * s  # (B, Hq, Lq, Lk), in acc
    if bias is not None:
        scores = scores + bias.to(acc)  # bias: float32/64 from mask_input.bias_dtype
    if score_mod is not None:
        scores = apply_score_mod(scores, score_mod)
    if allowed is not None and not v_finite:
        # A key no query may see cannot contribute; zero it so NaN/inf there never leaks
        # through 0 · NaN in the weighted sum. Per query head: masks may differ between the
        # heads of one group.
        used = allowed.expand(scores.shape).any(dim=-2).unsqueeze(-1)  # (B, Hq, Lk, 1)
        v = torch.where(used, expand_kv(v, hq), torch.zeros((), dtype=v.dtype, device=v.device))
    weights, lse = masked_softmax(scores, allowed)  # (B, Hq, Lq, Lk), (B, Hq, Lq)
    p = F.dropout(weights, dropout_p, training=True) if (training and dropout_p > 0) else weights
    if v.shape[1] != hq:  # grouped: (B, Hkv, g·Lq, Lk) @ (B, Hkv, Lk, Dv) -> (B, Hkv, g·Lq, Dv)
        p = p.reshape(B, hkv, g * Lq, Lk)
    context = (p @ v).view(B, hq, Lq, v.shape[-1])  # (B, Hq, Lq, Dv)
    return AttentionOutput(context.to(out_dtype), weights.to(out_dtype), lse)
