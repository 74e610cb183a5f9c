"""Running a mask as pieces: residue-class views, row gathers, and the merge of the pieces' results.

Strided, fixed and dilated patterns split into disjoint parts that are intervals once keys
(and queries) are reordered by residue class (attnlab.functional.masks.parts, each pattern's
``parts``). Each part runs through the tiled kernel with an interval mask; softmax over a
disjoint union is the lse-weighted sum of the parts' softmaxes: O = Σ_p exp(lse_p - lse)·O_p,
lse = log Σ_p exp(lse_p) (the merge of the online softmax, attnlab.functional.softmax.merge_partials),
differentiable through lse.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.functional.masks import Mask
from attnlab.functional.masks.parts import Part


def decompose(mask: Mask | None, q_len: int, kv_len: int, *, views: bool = True) -> list[Part] | None:
    """The mask's disjoint pieces (its pattern's ``parts``), or None to run it whole.
    ``views``: residue classes may run as views (q, k and v have the same heads)."""
    return None if mask is None else mask.pattern.parts(q_len, kv_len, views=views)


def residue_view(x: Tensor, d: int) -> Tensor:
    """(B, H, L, D) -> (B·H, d, L/d, D) with [., r, t] = x[., ., r + t·d]: a view (row stride d·D)
    when B and H merge, else one copy. L must be a multiple of d."""
    B, H, L, D = x.shape
    return x.reshape(B * H, L // d, d, D).transpose(1, 2)  # (B·H, L/d, d, D) -> (B·H, d, L/d, D)


def residue_unview(y: Tensor, batch: int, heads: int) -> Tensor:
    """Back from (B·H, d, L/d, ...) to natural order (B, H, L, ...): one strided copy."""
    _, d, n = y.shape[:3]
    return y.transpose(1, 2).reshape(batch, heads, d * n, *y.shape[3:])  # (B·H, L/d, d, ..) -> (B, H, L, ..)


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x[:, :, index] for x (B, H, L, D). Residue-class orders (index = the transpose of an
    (L/b, b) grid of positions, as dilated and strided patterns use when b divides L) are a
    reshape: one strided copy, ~3x faster than index_select's row-by-row gather."""
    n = index.numel()
    if n == x.shape[2] and n > 1:
        b = int(index[1] - index[0])
        if 1 < b < n and n % b == 0 and int(index[0]) == 0:
            a = n // b
            if torch.equal(index, torch.arange(n).view(a, b).t().flatten()):  # (a, b) read column-wise
                B, H, _, D = x.shape
                return x.reshape(B, H, a, b, D).transpose(2, 3).reshape(B, H, n, D)  # (B, H, L, D)
    return x.index_select(2, index)
