"""Strided, fixed and dilated patterns as a few dense-ish pieces instead of many partial tiles.

In natural order these patterns touch almost every tile below the diagonal with a few
entries each (the keys (i - j) mod l = 0 are spread over the whole row), so a block map alone
saves little. But each is a disjoint union of parts that become *intervals* once keys (and
queries) are reordered by residue class (Child et al. 2019 implement their kernels the same
way, gathering the strided keys):

- dilated window: queries and keys with equal (i + offset) mod d form a plain sliding window;
- strided:  window [i - l, i]  ∪  {j = i - m·l, m >= 2}, the latter a prefix of the keys of
  i's residue class;
- fixed:    own block up to i  ∪  the summary keys of earlier blocks (a prefix of them).

Each part runs through the tiled kernel with an interval mask; softmax over a disjoint union
is the lse-weighted sum of the parts' softmaxes: O = Σ_p exp(lse_p - lse)·O_p,
lse = log Σ_p exp(lse_p) (the same merge as the online softmax), differentiable through lse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnlab.functional.masks import Mask, _offset, sliding_window


def interval_mask(lo: Tensor, hi: Tensor, name: str) -> Mask:
    """Query i may attend keys lo[i]..hi[i] (inclusive); lo > hi is an empty row. lo, hi: (Lq,)."""

    def fn(b, h, q, kv, lq, lk):
        qc = q.clamp(0, lo.numel() - 1)
        return (kv >= lo.to(q.device)[qc]) & (kv <= hi.to(q.device)[qc])

    return Mask(fn, name, "intervals", {"lo": lo, "hi": hi})


@dataclass(frozen=True)
class Part:
    mask: Mask  # the part's mask, in the part's coordinates
    q_perm: Tensor | None = None  # the part's query i is original query q_perm[i] (a permutation)
    k_index: Tensor | None = None  # the part's key j is original key k_index[j] (any subset)
    # Residue classes as views: q, k, v (B, H, L, D) run as (B·H, d, L/d, D), class r of
    # d playing the role of a head (row t of class r = position r + t·d). No copies in.
    residue: int | None = None


def residue_view(x: Tensor, d: int) -> Tensor:
    """(B, H, L, D) -> (B·H, d, L/d, D) with [., r, t] = x[., ., r + t·d]: a view (row stride d·D)
    when B and H merge, else one copy. L must be a multiple of d."""
    B, H, L, D = x.shape
    return x.reshape(B * H, L // d, d, D).transpose(1, 2)


def residue_unview(y: Tensor, batch: int, heads: int) -> Tensor:
    """Back from (B·H, d, L/d, ...) to natural order (B, H, L, ...): one strided copy."""
    _, d, n = y.shape[:3]
    return y.transpose(1, 2).reshape(batch, heads, d * n, *y.shape[3:])


def _by_residue(pos: Tensor, d: int) -> tuple[Tensor, Tensor, Tensor]:
    """Order positions by (pos mod d, pos): returns the order, each class's start in it and each
    element's rank inside its class, indexed by original position."""
    r = torch.remainder(pos, d)
    order = torch.argsort(r * (int(pos.abs().max()) + 1) * 2 + pos, stable=True)
    counts = torch.bincount(r, minlength=d)
    start = torch.cumsum(counts, 0) - counts  # (d,)
    rank = torch.empty_like(pos)
    rank[order] = torch.arange(pos.numel()) - start[r[order]]
    return order, start, rank


def _residue_part(q_len: int, kv_len: int, d: int, off: int, t_lo: int, t_hi: int, name: str) -> Part:
    """Queries and keys reordered by residue mod d of (i + off) and j; query of rank t in class r
    sees the class-r keys of ranks t + t_lo .. t + t_hi."""
    cq = torch.arange(q_len) + off
    q_order, _, _ = _by_residue(cq, d)
    k_order, k_start, _ = _by_residue(torch.arange(kv_len), d)
    k_count = torch.bincount(torch.arange(kv_len) % d, minlength=d)
    cq_sorted = cq[q_order]  # (Lq,) in the part's order
    r = torch.remainder(cq_sorted, d)
    t = torch.div(cq_sorted - r, d, rounding_mode="floor")  # rank of the key j = r + t·d, if any
    lo = (t + t_lo).clamp(min=0)
    hi = torch.minimum(t + t_hi, k_count[r] - 1)
    lo, hi = k_start[r] + lo, k_start[r] + hi
    hi = torch.where(lo > hi, lo - 1, hi)  # empty rows stay empty after the shift
    return Part(interval_mask(lo, hi, name), q_order, k_order)


def decompose(mask: Mask | None, q_len: int, kv_len: int, *, views: bool = True) -> list[Part] | None:
    """The parts of a strided / fixed / dilated mask, or None for every other mask.
    ``views``: residue classes may run as views (q, k and v have the same heads)."""
    if mask is None:
        return None
    p = mask.params
    if mask.kind == "dilated_sliding_window" and p["dilation"] > 1:
        d = p["dilation"]
        off = _offset(p["align"], q_len, kv_len)
        if views and off == 0 and q_len % d == 0 and kv_len % d == 0:
            # Query i = r + t·d sees keys r + t'·d, -right <= t - t' <= left: a plain sliding
            # window inside each class.
            return [Part(sliding_window(p["left"], p["right"]), residue=d)]
        # Reordering by gathers costs about what dilation 2 wastes in natural order (measured).
        if d > 2:
            # key j = r + t'·d with r = (i + off) mod d; allowed: -right <= t - t' <= left.
            return [_residue_part(q_len, kv_len, d, off, -p["left"], p["right"], "dilated")]
        return None
    if mask.kind == "sparse_strided":
        l, i = p["stride"], torch.arange(q_len)
        window = interval_mask((i - l).clamp(min=0), i.clamp(max=kv_len - 1), "strided-window")
        # Far part: j = i - m·l, m >= 2, i.e. ranks t' <= t - 2 of i's class.
        if views and q_len % l == 0 and kv_len % l == 0:
            t = torch.arange(q_len // l)
            far = interval_mask(torch.zeros_like(t), (t - 2).clamp(max=kv_len // l - 1), "strided-far")
            return [Part(window), Part(far, residue=l)]
        return [Part(window), _residue_part(q_len, kv_len, l, 0, -(10**18), -2, "strided-far")]
    if mask.kind == "sparse_fixed":
        l, c, causal = p["stride"], p["summary"], p["causal"]
        i = torch.arange(q_len)
        own = (i // l) * l
        parts = [Part(interval_mask(own.clamp(max=kv_len),
                                    (i if causal else own + l - 1).clamp(max=kv_len - 1), "fixed-own"))]
        j = torch.arange(kv_len)
        summary = j[j % l >= l - c]  # (S,) the summary keys, in order
        if summary.numel():
            blocks_before = torch.searchsorted(summary, own)  # summary keys in earlier blocks
            parts.append(Part(interval_mask(torch.zeros_like(i), blocks_before - 1, "fixed-summary"),
                              None, summary))
            if not causal:  # summary keys of later blocks: a suffix
                after = torch.searchsorted(summary, own + l)
                parts.append(Part(interval_mask(after, torch.full_like(i, summary.numel() - 1),
                                                "fixed-summary-after"), None, summary))
        return parts
    return None


def merge(parts: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Softmax over a disjoint union of key sets from the parts' (context, lse), with clean
    gradients on rows where every part is empty (context 0, lse -inf)."""
    lses = torch.stack([lse for _, lse in parts])  # (P, B, H, Lq)
    m = lses.amax(0)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.exp(lses - m).sum(0)
    nonempty = s > 0
    lse = torch.where(nonempty, torch.log(torch.where(nonempty, s, torch.ones_like(s))) + m,
                      torch.full_like(s, float("-inf")))
    ref = torch.where(nonempty, lse, torch.zeros_like(lse)).unsqueeze(-1)
    if not torch.is_grad_enabled() or not any(c.requires_grad for c, _ in parts):
        ctx = parts[0][0].mul_(torch.exp(parts[0][1].unsqueeze(-1) - ref))  # in place: no copies
        for c, lp in parts[1:]:
            ctx.add_(c.mul_(torch.exp(lp.unsqueeze(-1) - ref)))
        return ctx, lse
    total = sum(c * torch.exp(lp.unsqueeze(-1) - ref) for c, lp in parts)
    assert isinstance(total, Tensor)
    return total, lse
