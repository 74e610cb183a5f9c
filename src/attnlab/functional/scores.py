"""Score functions: how well each query matches each key, before the softmax.

Every function maps queries ``q: (..., Lq, Dq)`` and keys ``k: (..., Lk, Dk)`` to
``scores: (..., Lq, Lk)``. Leading axes broadcast the way ``torch.matmul`` does.

References
- Vaswani et al. 2017, "Attention Is All You Need", eq. (1): scaled dot product.
- Luong, Pham, Manning 2015, "Effective Approaches to Attention-based NMT", eq. (8):
  ``dot``  h_tᵀ h̄_s,  ``general``  h_tᵀ W_a h̄_s,  ``concat``  v_aᵀ tanh(W_a [h_t; h̄_s]).
- Bahdanau, Cho, Bengio 2014, "Neural MT by Jointly Learning to Align and Translate",
  appendix A.1.2: e_ij = v_aᵀ tanh(W_a s_{i-1} + U_a h_j)  (additive attention).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnlab.functional.checks import expect_last_dim, expect_tensor


def dot(q: Tensor, k: Tensor) -> Tensor:
    """Luong "dot" score: qᵀk.  q (..., Lq, D), k (..., Lk, D) -> (..., Lq, Lk)."""
    expect_tensor("q", q, min_ndim=2)
    expect_tensor("k", k, min_ndim=2)
    expect_last_dim("k", k, q.shape[-1], "the last dim of q")
    return q @ k.transpose(-2, -1)  # (..., Lq, D) @ (..., D, Lk) -> (..., Lq, Lk)


def default_scale(d_head: int) -> float:
    """1/sqrt(d): keeps the variance of qᵀk near 1 for unit-variance inputs (Vaswani §3.2.1)."""
    return 1.0 / math.sqrt(d_head)


def resolve_scale(scale: object, d_head: int) -> float:
    """The ``scale`` argument of every attention entry point: None means 1/sqrt(d_head)."""
    if scale is None:
        return default_scale(d_head)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite number or None, got {scale!r}")
    return float(scale)


def scaled_dot(q: Tensor, k: Tensor, scale: float | None = None) -> Tensor:
    """Scaled dot product (Vaswani eq. 1): qᵀk · scale, scale defaults to 1/sqrt(D)."""
    s = default_scale(q.shape[-1]) if scale is None else float(scale)
    return dot(q, k) * s


def general(q: Tensor, k: Tensor, weight: Tensor) -> Tensor:
    """Luong "general" (bilinear) score, eq. (8): h_tᵀ W_a h̄_s.

    q (..., Lq, Dq), k (..., Lk, Dk), weight (Dq, Dk) -> (..., Lq, Lk).
    """
    expect_tensor("q", q, min_ndim=2)
    expect_tensor("k", k, min_ndim=2)
    expect_tensor("weight", weight, ndim=2)
    if tuple(weight.shape) != (q.shape[-1], k.shape[-1]):
        raise ValueError(
            f"weight: expected shape (Dq, Dk) = ({q.shape[-1]}, {k.shape[-1]}), "
            f"got {tuple(weight.shape)}"
        )
    return (q @ weight) @ k.transpose(-2, -1)  # (..., Lq, Dk) @ (..., Dk, Lk)


def additive(q: Tensor, k: Tensor, w_q: Tensor, w_k: Tensor, v: Tensor) -> Tensor:
    """Bahdanau additive score: vᵀ tanh(W_q q + W_k k).

    q (..., Lq, Dq), k (..., Lk, Dk), w_q (A, Dq), w_k (A, Dk), v (A,) -> (..., Lq, Lk).
    Memory is O(Lq·Lk·A): the tanh is taken over every (query, key) pair.
    """
    expect_tensor("q", q, min_ndim=2)
    expect_tensor("k", k, min_ndim=2)
    expect_tensor("v", v, ndim=1)
    a = v.shape[0]
    for name, w, d in (("w_q", w_q, q.shape[-1]), ("w_k", w_k, k.shape[-1])):
        expect_tensor(name, w, ndim=2)
        if tuple(w.shape) != (a, d):
            raise ValueError(f"{name}: expected shape (A, D) = ({a}, {d}), got {tuple(w.shape)}")
    pq = q @ w_q.T  # (..., Lq, A)
    pk = k @ w_k.T  # (..., Lk, A)
    hidden = torch.tanh(pq.unsqueeze(-2) + pk.unsqueeze(-3))  # (..., Lq, Lk, A)
    return hidden @ v  # (..., Lq, Lk)


def concat(q: Tensor, k: Tensor, weight: Tensor, v: Tensor) -> Tensor:
    """Luong "concat" score, eq. (8): v_aᵀ tanh(W_a [h_t; h̄_s]).

    weight (A, Dq + Dk) is split into its query and key halves, which makes this the
    additive score with W_q = W_a[:, :Dq] and W_k = W_a[:, Dq:].
    """
    expect_tensor("weight", weight, ndim=2)
    dq, dk = q.shape[-1], k.shape[-1]
    if weight.shape[1] != dq + dk:
        raise ValueError(
            f"weight: expected shape (A, Dq + Dk) = (A, {dq + dk}), got {tuple(weight.shape)}"
        )
    return additive(q, k, weight[:, :dq], weight[:, dq:], v)


SCORE_FUNCTIONS = {
    "dot": dot,
    "scaled_dot": scaled_dot,
    "general": general,
    "additive": additive,
    "concat": concat,
}
