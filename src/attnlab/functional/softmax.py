"""Masked softmax with log-sum-exp, safe for rows where every key is masked, and the merge of
partial softmaxes over disjoint key sets by their log-sum-exps.

PyTorch's plain softmax over a row of -inf gives NaN (and nn.MultiheadAttention returns NaN
for such rows). Here a fully masked row gives weights of exact zeros, an ``lse`` of -inf and
zero gradients, and a NaN or inf score at a masked position never reaches the output.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def merge_partials(parts: Sequence[tuple[Tensor, Tensor]], *, inplace: bool = False
                   ) -> tuple[Tensor, Tensor]:
    """Attention over a disjoint union of key sets, from each set's ``(context, lse)``: the merge
    of the online softmax (Milakov & Gimelshein 2018; FlashAttention, Dao et al. 2022, Alg. 1
    lines 9-12), used alike for the tiled kernel's key segments, sparse masks run as pieces and
    ring attention's hops:

        lse = log Σ_p exp(lse_p),   context = Σ_p exp(lse_p - lse) · context_p

    contexts (..., Dv), lses (...). A row that no part sees (every lse_p = -inf, its contexts
    zeros) gives lse -inf and a context of zeros, with zero gradients, never NaN.
    ``inplace``: every context is scaled in place and the others are added into the first, which
    is returned (no copies; for callers that need no gradient through the contexts). Otherwise
    differentiable w.r.t. contexts and lses.
    """
    if not parts:
        raise ValueError("parts: expected at least one (context, lse) pair, got none")
    lses = torch.stack([lse for _, lse in parts])  # P x (...) -> (P, ...)
    m = lses.amax(0)  # (P, ...) -> (...)
    # No part sees the row: shift by 0 instead of -inf, so that exp() gives exact zeros.
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.exp(lses - m).sum(0)  # (P, ...) -> (...)
    nonempty = s > 0
    # log(1) on empty rows: the branch torch.where drops must have a finite gradient too.
    lse = torch.where(nonempty, torch.log(torch.where(nonempty, s, torch.ones_like(s))) + m,
                      torch.full_like(s, float("-inf")))
    ref = torch.where(nonempty, lse, torch.zeros_like(lse)).unsqueeze(-1)  # (...) -> (..., 1)
    if inplace:
        ctx = parts[0][0].mul_(torch.exp(parts[0][1].unsqueeze(-1) - ref))  # (..., Dv) x (..., 1)
        for c, lp in parts[1:]:
            ctx.add_(c.mul_(torch.exp(lp.unsqueeze(-1) - ref)))  # (..., Dv) x (..., 1)
        return ctx, lse
    total = sum(c * torch.exp(lp.unsqueeze(-1) - ref) for c, lp in parts)  # (..., Dv) x (..., 1)
    assert isinstance(total, Tensor)
    return total, lse
