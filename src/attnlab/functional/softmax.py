"""Masked softmax with log-sum-exp, safe for rows where every key is masked.

PyTorch's plain softmax over a row of -inf gives NaN (and nn.MultiheadAttention returns NaN
for such rows). Here a fully masked row gives weights of exact zeros, an ``lse`` of -inf and
zero gradients, and a NaN or inf score at a masked position never reaches the output.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_softmax(scores: Tensor, allowed: Tensor | None = None, dim: int = -1
                   ) -> tuple[Tensor, Tensor]:
    """softmax over ``dim`` of ``scores`` where ``allowed`` is True.

    scores (..., Lk), allowed bool broadcastable to scores (True = may attend).
    Returns ``(weights, lse)``: weights like scores, lse (...) = log Σ_allowed exp(scores),
    -inf for a fully masked row.
    """
    if allowed is not None:
        # masked_fill, not addition: -inf + NaN would still be NaN.
        scores = scores.masked_fill(~allowed, float("-inf"))
    row_max = scores.amax(dim=dim, keepdim=True)
    # A fully masked row has max -inf; shifting by 0 instead keeps exp() at exact zeros.
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max)).detach()
    e = torch.exp(scores - row_max)
    total = e.sum(dim=dim, keepdim=True)
    empty = total == 0
    # Divide by 1 on empty rows: e is all zeros there, so weights and gradients are zeros.
    weights = e / torch.where(empty, torch.ones_like(total), total)
    lse = torch.where(empty, torch.full_like(total, float("-inf")), total.log() + row_max)
    return weights, lse.squeeze(dim)


def logsumexp_merge(lse_a: Tensor, lse_b: Tensor) -> Tensor:
    """log(exp(a) + exp(b)) with -inf on both sides giving -inf (no NaN): combines the
    partial lse of two key blocks in online-softmax kernels."""
    m = torch.maximum(lse_a, lse_b)
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.exp(lse_a - m_safe) + torch.exp(lse_b - m_safe)
    return torch.where(s > 0, s.log() + m_safe, torch.full_like(m, float("-inf")))
