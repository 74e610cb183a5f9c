"""The tiled backward pass (FlashAttention, Dao et al. 2022, Alg. 2; FlashAttention-2, Dao 2023).

Each tile is recomputed from the saved lse instead of storing P: P = exp(S - lse),
dV += Pᵀ·dO, dP = dO·Vᵀ, dS = P ∘ (dP - D) with D_i = rowsum(dO ∘ O) (minus d lse_i when the
lse itself receives a gradient), dQ += dS·K, dK += dSᵀ·Q. As in the forward pass, a batched
tile runs head by head so its scores stay in cache, and memory is O(L·Dh + tile budget).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from attnlab.backends.tiled.fused import fused_backward_ok, fused_tile_backward
from attnlab.backends.tiled.gemm import band, head_loop, pv, qk, scatter_band, tn
from attnlab.backends.tiled.parallel import Group, fixed_groups, run_parallel, workers
from attnlab.backends.tiled.plan import Plan, QueryChunk
from attnlab.backends.tiled.tile_ops import (
    NEG_INF,
    Padded,
    Scratch,
    clean_band,
    head_index,
    head_view,
    q_view,
    q_write,
    score_tile,
    scratch,
    tile_masks,
)
from attnlab.backends.tiled.tiles import TileContext
from attnlab.backends.tiled.tuning import FUSED_BWD_MIN_ROWS, GROUPS_PER_THREAD


def _backward_chunks(tc: TileContext, x: Padded, plan: Plan, scale: float, chunks: Iterable[QueryChunk],
                     lse_r: Tensor, delta: Tensor, dout: Tensor, grads: tuple[Tensor, Tensor, Tensor],
                     sanitize: bool, capture: bool, out: Tensor | None, buf: Scratch,
                     base: int = 0) -> None:
    """``out`` given: tiles go through ATen's fused backward (fused.py), which takes the
    rows' context instead of delta. dK/dV (``grads[1:]``) start at key block ``base``."""
    B, H = x.q.shape[:2]
    bq, bk = plan.bq, plan.bk
    dq, dk, dv = grads
    autograd_mod = tc.score_mod is not None or capture
    for chunk in chunks:
        qc, doc = q_view(x.q, chunk, bq), q_view(dout, chunk, bq)  # (B, H, nb, bq, D|Dv)
        lse_c, delta_c = q_view(lse_r, chunk, bq), q_view(delta, chunk, bq)  # (B, H, nb, bq, 1)
        dqc = q_view(dq, chunk, bq) if chunk.q_start is not None else torch.empty_like(qc)
        for n_seg, seg in enumerate(chunk.segments):
            kb, vb = band(x.k, seg, bk, buf.k), band(x.v, seg, bk, buf.v)  # (B, H, nb, w·bk, D)
            qi, ki, oks = tile_masks(tc, chunk, seg)
            if out is not None:
                dqs, dks, dvs = fused_tile_backward(qc, kb, vb, q_view(out, chunk, bq), doc, lse_c, seg, oks,
                                                    scale, bk, buf.mask)
                dqc.copy_(dqs) if n_seg == 0 else dqc.add_(dqs)
                scatter_band(dk, dks, seg, bk, base)
                scatter_band(dv, dvs, seg, bk, base)
                continue
            if sanitize and seg.masked:
                kb, vb = clean_band(kb, oks, seg, bk), clean_band(vb, oks, seg, bk)
            for i, j in head_loop(B, H, seg.k_blocks.numel() * bq * bk):
                qh, kh, vh, doh = (head_view(t, i, j) for t in (qc, kb, vb, doc))
                lse_h, delta_h = head_view(lse_c, i, j), head_view(delta_c, i, j)
                idx = head_index(tc, qi, ki, i, j)
                raw = qk(qh, kh, seg, score_tile(buf.scores, qh, kh), scale)  # S: (b, h, nb, bq, w·bk)
                if autograd_mod:
                    raw = raw.clone().requires_grad_(True)
                    with torch.enable_grad():
                        s = tc.modify(raw, *idx)
                    p = torch.exp(s.detach() - lse_h)
                else:
                    s = tc.modify(raw, *idx) if tc.modifies else raw  # a constant bias
                    p = s.sub_(lse_h).exp_()  # P = exp(S - lse), in place
                for (p0, p1), ok in zip(seg.masked, oks, strict=True):
                    p[..., p0 * bk: p1 * bk].masked_fill_(~head_view(ok, i, j), 0.0)
                scatter_band(head_view(dv, i, j), tn(p, doh, seg), seg, bk, base)  # dV += Pᵀ·dO
                ds = qk(doh, vh, seg, score_tile(buf.grads, qh, kh))  # dP = dO·Vᵀ
                ds.sub_(delta_h).mul_(p)  # dS = P ∘ (dP - D)
                if autograd_mod:
                    if capture:  # shared upstream nodes (the bias's graph) are visited once per tile
                        torch.autograd.backward(s, ds, retain_graph=True)
                        assert raw.grad is not None  # s is computed from raw, a fresh leaf
                        ds = raw.grad
                    else:
                        (ds,) = torch.autograd.grad(s, raw, ds)
                pv(ds, kh, seg, head_view(dqc, i, j), beta=0.0 if n_seg == 0 else 1.0)  # dQ += dS·K
                scatter_band(head_view(dk, i, j), tn(ds, qh, seg, scale), seg, bk, base)  # dK += scale·dSᵀ·Q
        if chunk.q_start is None:
            q_write(dq, dqc, chunk, bq)


def backward_pass(tc: TileContext, x: Padded, plan: Plan, scale: float, out: Tensor, lse: Tensor,
                  dout: Tensor, dlse: Tensor | None = None, *, sanitize: bool, capture: bool,
                  threads: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients w.r.t. the padded q and the padded, expanded k, v.

    out, dout: (B, H, nQB·bq, Dv); lse: (B, H, nQB·bq). ``capture``: the bias / score_mod holds
    tensors that want gradients; they receive them through a nested backward (as in eager
    training with .backward()), single-threaded.

    Bitwise reproducible: dQ rows are disjoint per chunk. dK and dV bands of different chunks
    overlap, and a float sum depends on its order, so their order is fixed by the plan and the
    thread count alone, never by which worker ran what: the chunks are cut into fixed groups
    (parallel.fixed_groups), each summed in query order into its own buffer (covering
    only the keys it reads); workers take whole groups, and the groups' buffers are then added
    in group order. (Per-worker buffers, as before, made dK/dV differ by ~1e-7 between runs.)"""
    B, H = x.q.shape[:2]
    delta = (dout * out).sum(-1, keepdim=True)  # (B, H, nQB·bq, 1): D_i = rowsum(dO ∘ O)
    if dlse is not None:  # d lse_i / d s_ij = P_ij: dS = P ∘ (dP - D + dlse)
        delta = delta - dlse.unsqueeze(-1)  # dlse (B, H, nQB·bq) -> (B, H, nQB·bq, 1)
    # Fully masked rows: lse = -inf; use +inf so that P = exp(S - lse) is exactly 0 there.
    lse_r = torch.where(lse == NEG_INF, torch.full_like(lse, float("inf")), lse).unsqueeze(-1)  # (B, H, L, 1)
    dq = torch.empty_like(x.q)  # every chunk writes its rows; rows without tiles are zeroed here
    idle = (plan.counts == 0).nonzero().flatten()  # (n_idle,) query blocks without tiles
    if idle.numel():
        dq.view(B, H, -1, plan.bq, dq.shape[-1])[:, :, idle] = 0.0  # (B, H, nQB, bq, D)
    n = 1 if capture else (workers() if threads is None else threads)
    fused = plan.bq >= FUSED_BWD_MIN_ROWS and fused_backward_ok(x.q, x.v, tc.modifies, sanitize, dlse,
                                                                capture)
    dk, dv = torch.zeros_like(x.k), torch.zeros_like(x.v)
    groups = fixed_groups(plan.chunks, GROUPS_PER_THREAD * n if n > 1 else 1)
    bk = plan.bk
    # group 0 sums straight into dk/dv; the others into buffers of their key extent
    bufs: list[tuple[Tensor, Tensor] | None] = [None] * len(groups)

    def work(part: Iterable[Group], _: int) -> None:
        tile_bufs = scratch(x, plan, fused=fused, backward=True)
        for g in part:
            if g.index == 0:
                acc, base = (dk, dv), 0
            else:
                rows = slice(g.lo * bk, g.hi * bk)
                acc, base = (torch.zeros_like(dk[:, :, rows]), torch.zeros_like(dv[:, :, rows])), g.lo
                bufs[g.index] = acc
            _backward_chunks(tc, x, plan, scale, g.chunks, lse_r, delta, dout, (dq, *acc), sanitize, capture,
                             out if fused else None, tile_bufs, base)

    run_parallel(work, groups, n, cost=lambda g: g.cost)
    for g, acc in zip(groups[1:], bufs[1:], strict=True):  # fixed order: group 1, 2, ...
        assert acc is not None
        dk[:, :, g.lo * bk: g.hi * bk] += acc[0]
        dv[:, :, g.lo * bk: g.hi * bk] += acc[1]
    return (dq if fused else dq.mul_(scale)), dk, dv  # the fused op applies the scale itself
