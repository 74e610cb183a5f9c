"""The tiled forward pass (FlashAttention, Dao et al. 2022, Alg. 1; the key-split merge of
Flash-Decoding, Dao et al. 2023).

:func:`forward_tile` is one batched tile (see plan.py), start to end: S = scale·Q·Kᵀ (the scale
fused into the GEMM), score_mod, -inf on the masked entries of partial tiles, one fused softmax
over the band, in place, with its lse; then P·V merged into the rows' running context and lse.
A band holds every key block of its query blocks unless it was cut into key segments; segments
are merged with their log-sum-exps (the online softmax, Alg. 1 lines 9-12, applied per segment
instead of per block): O = Σ_s exp(lse_s - lse)·O_s, lse = log Σ exp(lse_s). When nothing needs
the plain ops, ATen's fused op (fused.py) does the whole tile. :func:`forward_pass` walks the
plan's query chunks and their segments. Memory is O(Lq·Dh + tile budget).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from attnlab.backends.tiled.fused import fused_ok, fused_tile
from attnlab.backends.tiled.gemm import band, head_loop, pv, qk
from attnlab.backends.tiled.parallel import run_parallel
from attnlab.backends.tiled.plan import Plan, QueryChunk, Segment
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
from attnlab.functional.softmax import merge_partials


def _inplace_softmax_ok() -> bool:
    """ATen's last-dim softmax reads a row (max), then writes exp(x - max) and rescales: safe
    with out aliasing the input. Checked once rather than assumed."""
    g = torch.Generator().manual_seed(0)
    for n in (7, 300, 5000):
        x = torch.randn(3, n, generator=g) * 5
        ref = torch.softmax(x, -1)
        torch._softmax(x, -1, False, out=x)
        if not torch.allclose(x, ref):
            return False
    return True


_INPLACE = _inplace_softmax_ok()


def _softmax_(s: Tensor) -> Tensor:
    """Softmax over the last dim, in place when that is known to be safe."""
    return torch._softmax(s, -1, False, out=s) if _INPLACE else torch.softmax(s, -1)


def forward_tile(tc: TileContext, qc: Tensor, kb: Tensor, vb: Tensor, seg: Segment,
                 masks: tuple[Tensor, Tensor, list[Tensor]], scale: float, acc: Tensor, acc_lse: Tensor,
                 buf: Scratch, *, first: bool, fused: bool, sanitize: bool) -> None:
    """acc (B, H, nb, bq, Dv), acc_lse (B, H, nb, bq) <- the rows' attention over the keys of the
    segments before this one (none when ``first``) and this segment's, qc (B, H, nb, bq, D)
    against kb, vb (B, H, nb, w·bk, D|Dv). ``masks``: tile_masks' (q index, kv index, allowed
    per partial run).

    Plain-op tiles run head by head when B·H is small (gemm.head_loop): one head's scores stay
    in cache from the QKᵀ GEMM through mask, softmax and the PV GEMM, and a band is a plain 3-D
    strided tensor."""
    B, H, _, bq, _ = qc.shape
    bk = tc.bk
    qi, ki, oks = masks
    if sanitize and seg.masked:  # never fused (fused.fused_ok)
        vb = clean_band(vb, oks, seg, bk)
    heads = [(None, None)] if fused else head_loop(B, H, seg.k_blocks.numel() * bq * bk)
    for i, j in heads:
        acc_h, lse_h = head_view(acc, i, j), head_view(acc_lse, i, j)  # (b, h, nb, bq, Dv), (b, h, nb, bq)
        if fused:  # all heads at once through ATen's fused loop
            o, lse = fused_tile(qc, kb, vb, seg, oks, scale, bk, buf.mask)
            lse = lse.squeeze(-1)  # (B, H, nb, bq, 1) -> (B, H, nb, bq)
        else:
            qh, kh, vh = head_view(qc, i, j), head_view(kb, i, j), head_view(vb, i, j)  # (b, h, nb, ., D)
            s = qk(qh, kh, seg, score_tile(buf.scores, qh, kh), scale)  # S: (b, h, nb, bq, w·bk)
            if tc.modifies:
                s = tc.modify(s, *head_index(tc, qi, ki, i, j))
            for (p0, p1), ok in zip(seg.masked, oks, strict=True):
                s[..., p0 * bk: p1 * bk].masked_fill_(~head_view(ok, i, j), NEG_INF)
            m = s.amax(-1)  # (b, h, nb, bq)
            p = _softmax_(s)  # fused max/exp/sum/scale, in place: the tile stays in cache
            # softmax gives p_max = 1/Σexp(s - m), so lse = m - log(p_max) with no extra pass.
            lse = m - p.amax(-1).log()
            if seg.masked or tc.modifies:
                empty = m == NEG_INF  # fully masked rows: softmax gave NaN
                if bool(empty.any()):
                    p.masked_fill_(empty.unsqueeze(-1), 0.0)  # (b, h, nb, bq) -> (b, h, nb, bq, 1)
                    lse.masked_fill_(empty, NEG_INF)
            o = pv(p, vh, seg, acc_h if first else None)  # P·V: the first segment's straight into acc
        # The online softmax update (Alg. 1 lines 9-12), once per key segment.
        if first:
            if fused:
                acc_h.copy_(o)
            lse_h.copy_(lse)
        else:
            _, merged = merge_partials([(acc_h, lse_h), (o, lse)], inplace=True)  # into acc_h; o overwritten
            lse_h.copy_(merged)


def _forward_chunks(tc: TileContext, x: Padded, plan: Plan, scale: float, chunks: Iterable[QueryChunk],
                    out: Tensor, lse: Tensor, sanitize: bool) -> None:
    bq, bk = plan.bq, plan.bk
    fused = fused_ok(x.q, x.v, tc.modifies, sanitize)
    buf = scratch(x, plan, fused=fused)
    for chunk in chunks:
        qc = q_view(x.q, chunk, bq)  # (B, H, nb, bq, D)
        # A chunk of one segment over consecutive query blocks accumulates straight into the output.
        direct = len(chunk.segments) == 1 and chunk.q_start is not None
        acc = q_view(out, chunk, bq) if direct else x.q.new_empty(*qc.shape[:4], x.v.shape[-1])
        acc_lse = q_view(lse, chunk, bq) if direct else x.q.new_empty(qc.shape[:4])  # (B, H, nb, bq)
        for n_seg, seg in enumerate(chunk.segments):
            kb, vb = band(x.k, seg, bk, buf.k), band(x.v, seg, bk, buf.v)  # (B, H, nb, w·bk, D)
            forward_tile(tc, qc, kb, vb, seg, tile_masks(tc, chunk, seg), scale, acc, acc_lse, buf,
                         first=n_seg == 0, fused=fused, sanitize=sanitize)
        if not direct:
            q_write(out, acc, chunk, bq)
            q_write(lse, acc_lse, chunk, bq)


def forward_pass(tc: TileContext, x: Padded, plan: Plan, scale: float, *, sanitize: bool,
                 threads: int | None = None) -> tuple[Tensor, Tensor]:
    """Returns context (B, H, nQB·bq, Dv) and lse (B, H, nQB·bq); rows without tiles get 0/-inf.
    Query chunks write disjoint rows, so workers need no synchronisation."""
    B, H, Lqp, _ = x.q.shape
    out = x.q.new_empty(B, H, Lqp, x.v.shape[-1])
    lse = x.q.new_full((B, H, Lqp), NEG_INF)
    idle = (plan.counts == 0).nonzero().flatten()  # (n_idle, 1) -> (n_idle,) query blocks that see no key
    if idle.numel():
        out.view(B, H, -1, plan.bq, out.shape[-1])[:, :, idle] = 0.0  # (B, H, nQB·bq, Dv) -> (., nQB, bq, Dv)
    run_parallel(lambda part, _: _forward_chunks(tc, x, plan, scale, part, out, lse, sanitize),
                 plan.chunks, threads)
    return out, lse
