"""Exact attention weights for chosen rows and heads, recomputed from a saved ``lse``.

The fast kernels never materialise the (Lq, Lk) weights, but they return the log-sum-exp of
every row. Since softmax(s)_j = exp(s_j - lse), the weights of any row are one matmul away:
O(rows · Lk) work and memory, so a 1M-token sequence can still be inspected row by row.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from attnlab.functional.attention import ScoreMod, compute_dtype, expand_kv, validate_qkv
from attnlab.functional.evaluator import Evaluator
from attnlab.functional.mask_input import NormalizedMask, normalize_mask
from attnlab.functional.scores import resolve_scale

Selection = int | slice | list[int] | tuple[int, ...] | Tensor | None


def _select(name: str, sel: Selection, size: int) -> Tensor:
    """Indices (n,) int64 from an int, slice, list or tensor; negative ints count from the end."""
    if sel is None:
        return torch.arange(size)
    if isinstance(sel, slice):
        return torch.arange(size)[sel]
    t = torch.as_tensor([sel] if isinstance(sel, int) else sel)
    if t.is_floating_point() or t.dtype == torch.bool or t.ndim > 1:
        raise TypeError(f"{name}: expected an int, a slice or a 1-D list of ints, got {sel!r}")
    t = t.long().flatten()
    if t.numel() and (int(t.min()) < -size or int(t.max()) >= size):
        raise ValueError(f"{name}: expected indices in [-{size}, {size}), got {t.tolist()}")
    return t % size


def weights_for(q: Tensor, k: Tensor, lse: Tensor, *, rows: Selection = None, heads: Selection = None,
                mask: object = None, score_mod: ScoreMod | None = None,
                scale: float | None = None) -> Tensor:
    """Weights softmax(score_mod(q·kᵀ·scale) + mask) for the selected query ``rows`` and ``heads``.

    Pass the same q, k, mask, score_mod and scale as to the attention call that returned
    ``lse`` (e.g. ``out = attnlab.attention(q, k, v, mask=m, backend="tiled")`` then
    ``weights_for(q, k, out.lse, rows=[0, 4095], mask=m)``). Shapes as in attention:
    q (B, H, Lq, D) (or (H, Lq, D), (Lq, D)), lse q.shape[:-1]. Returns (B, h, r, Lk) with the
    leading dims dropped like q's. Fully masked rows (lse = -inf) give zeros.
    """
    qkv = validate_qkv(q, k, k)
    B, H, Lq, _ = qkv.shape
    if not isinstance(lse, Tensor) or tuple(lse.shape) != tuple(q.shape[:-1]):
        got = tuple(lse.shape) if isinstance(lse, Tensor) else type(lse).__name__
        raise ValueError(f"lse: expected shape {tuple(q.shape[:-1])} (q without its last dim), got {got}")
    s = resolve_scale(scale, qkv.q.shape[-1])
    r, h = _select("rows", rows, Lq), _select("heads", heads, H)
    nm = normalize_mask(mask, qkv.shape, dtype=qkv.q.dtype, device=qkv.q.device)
    w = weights_rows(qkv.q, qkv.k, lse.reshape(B, H, Lq), nm, score_mod, s, r, h)
    _check_normalised(w, lse.reshape(B, H, Lq)[:, h][:, :, r], r, h)
    _check_dead_rows(qkv.q, qkv.k, lse.reshape(B, H, Lq), nm, score_mod, s, r, h)
    return w.reshape(w.shape[4 - q.ndim:]) if q.ndim < 4 else w


def _check_normalised(w: Tensor, lse: Tensor, r: Tensor, h: Tensor) -> None:
    """Rows recomputed from an lse sum to 1 only with the mask, score_mod and scale of the call
    that made it; anything else would silently give wrong weights, so it is an error."""
    sums = w.double().sum(-1)  # (B, h, r)
    # half weights carry ~0.4% rounding each (and a float32 lse near 8000 is spaced 1e-3): a
    # mismatched mask or scale moves the sums far more (tests: 7.2 for a causal lse, no mask)
    tol = 0.02 if w.dtype in (torch.float16, torch.bfloat16) else 1e-3
    bad = torch.isfinite(lse) & ((sums - 1).abs() > tol)
    _refuse(bad, r, h, lambda b, hi, ri: f"the weights recomputed from it sum to "
                                         f"{float(sums[b, hi, ri]):.4g}, not 1")


def _check_dead_rows(q: Tensor, k: Tensor, lse: Tensor, nm: NormalizedMask,
                     score_mod: ScoreMod | None, scale: float, r: Tensor, h: Tensor) -> None:
    """A row with lse = -inf saw no key in the call that made it; if this mask lets it see one,
    the mask is not that call's, and the zeros returned for the row would be silently wrong."""
    dead = lse[:, h][:, :, r] == float("-inf")  # (B, h, r)
    if not bool(dead.any()):
        return
    # exp(score - 0) > 0 wherever this mask and score_mod leave a finite score: (B, h, r, Lk)
    seen = weights_rows(q, k, torch.where(lse == float("-inf"), 0.0, lse), nm, score_mod, scale,
                        r, h) > 0
    _refuse(dead & seen.any(-1), r, h, lambda b, hi, ri: f"a row that saw no key (lse = -inf) "
                                                         f"sees {int(seen[b, hi, ri].sum())} here")


def _refuse(bad: Tensor, r: Tensor, h: Tensor, why: Callable[[int, int, int], str]) -> None:
    """bad (B, h, r) bool: raise for the first bad row, saying ``why`` and where."""
    if bool(bad.any()):
        b, hi, ri = (int(x) for x in bad.nonzero()[0])
        raise ValueError(f"lse: {why(b, hi, ri)} (batch {b}, head {int(h[hi])}, row {int(r[ri])}): "
                         "pass the same mask, score_mod and scale as the attention call that "
                         "returned this lse")


def weights_rows(q: Tensor, k: Tensor, lse: Tensor, nm: NormalizedMask, score_mod: ScoreMod | None,
                 scale: float, r: Tensor, h: Tensor) -> Tensor:
    """The core of :func:`weights_for` on validated 4-D inputs: q (B, H, Lq, D), k (B, Hkv, Lk, D),
    lse (B, H, Lq), row and head indices -> weights (B, h, r, Lk)."""
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    dev = q.device  # the index grids meet the scores there (a mask_mod compares them)
    r, h = r.to(dev), h.to(dev)
    dense = None if nm.dense is None else nm.dense.expand(-1, -1, Lq, Lk)
    bias = None if nm.bias is None else nm.bias.expand(-1, -1, Lq, Lk)
    tc = Evaluator(B, H, Lq, Lk, nm.mod, dense, bias, score_mod)
    ct = compute_dtype(q.dtype)  # half inputs: scores in float32, as the reference computes them
    qs = q[:, h][:, :, r].to(ct)  # (B, h, r, D)
    ks = expand_kv(k, H)[:, h].to(ct)  # (B, h, Lk, D)
    scores = (qs @ ks.transpose(-1, -2)) * scale  # (B, h, r, Lk)
    bi, hi = torch.arange(B, device=dev).view(-1, 1, 1, 1), h.view(1, -1, 1, 1)
    qi, ki = r.view(1, 1, -1, 1), torch.arange(Lk, device=dev).view(1, 1, 1, -1)
    if tc.modifies:
        scores = tc.modify(scores, bi, hi, qi, ki)
    lse4 = lse[:, h][:, :, r].unsqueeze(-1)  # (B, h, r, 1)
    lse4 = torch.where(lse4 == float("-inf"), torch.full_like(lse4, float("inf")), lse4)
    w = torch.exp(scores - lse4)
    if tc.masks:
        w = w.masked_fill(~tc.allowed(bi, hi, qi, ki), 0.0)
    return w.to(q.dtype)
