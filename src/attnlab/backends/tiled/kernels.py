"""The tiled forward pass (FlashAttention, Dao et al. 2022, Alg. 1; the key-split merge of
Flash-Decoding, Dao et al. 2023) and the helpers the backward pass (backward.py) shares.

Per batched tile (see plan.py): S = scale·Q·Kᵀ (the scale fused into the GEMM),
score_mod, -inf on the masked entries of partial tiles, then one fused softmax over the band,
in place. A band holds every key block of its query blocks unless it was cut into key
segments; segments are merged with their log-sum-exps (the online softmax, Alg. 1 lines 9-12,
applied per segment instead of per block): O = Σ_s exp(lse_s - lse)·O_s, lse = log Σ exp(lse_s).
Memory is O(Lq·Dh + tile budget).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.backends.tiled.fused import fused_ok, fused_tile
from attnlab.backends.tiled.gemm import band, head_loop, pv, qk
from attnlab.backends.tiled.parallel import run_parallel
from attnlab.backends.tiled.plan import Plan, QueryChunk, Segment
from attnlab.backends.tiled.tiles import TileContext
from attnlab.functional.softmax import merge_partials

NEG_INF = float("-inf")


@dataclass
class Padded:
    """q, k, v padded to whole blocks; k/v expanded to the query heads (GQA)."""

    q: Tensor  # (B, H, nQB·bq, D)
    k: Tensor  # (B, H, nKB·bk, D)
    v: Tensor  # (B, H, nKB·bk, Dv)


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


def pad_rows(x: Tensor, rows: int) -> Tensor:
    """x (B, H, L, D) padded with zero rows to ``rows``. Without padding a strided view (rows
    of a residue class: row stride d·D) is kept as it is: bands and GEMMs read it in place."""
    if rows > x.shape[2]:
        return F.pad(x, (0, 0, 0, rows - x.shape[2])).contiguous()
    return x if x.stride(-1) == 1 else x.contiguous()


def q_view(x: Tensor, chunk: QueryChunk, bq: int) -> Tensor:
    """(B, H, nQB·bq, D) -> the chunk's query blocks (B, H, nb, bq, D), a view when contiguous."""
    B, H, _, D = x.shape
    xb = x.view(B, H, -1, bq, D)  # (B, H, nQB, bq, D)
    if chunk.q_start is not None:
        return xb[:, :, chunk.q_start: chunk.q_start + chunk.q_blocks.numel()]
    return xb.index_select(2, chunk.q_blocks)


def q_write(dst: Tensor, val: Tensor, chunk: QueryChunk, bq: int) -> None:
    B, H = dst.shape[:2]
    db = dst.view(B, H, -1, bq, *dst.shape[3:])  # (B, H, nQB, bq, ...)
    if chunk.q_start is not None:
        db[:, :, chunk.q_start: chunk.q_start + chunk.q_blocks.numel()] = val
    else:
        db.index_copy_(2, chunk.q_blocks, val)


def clean_band(x: Tensor, oks: list[Tensor], seg: Segment, bk: int) -> Tensor:
    """Zero keys/values that no row of the tile may see, so that inf/NaN stored there cannot
    reach the output through 0·inf (only used when k or v hold non-finite values)."""
    x = x.clone()
    for (p0, p1), ok in zip(seg.masked, oks, strict=True):
        used = ok.any(-2).unsqueeze(-1)  # (B|1, H|1, nb, run·bk, 1)
        part = x[..., p0 * bk: p1 * bk, :]
        x[..., p0 * bk: p1 * bk, :] = torch.where(used, part, torch.zeros((), dtype=x.dtype))
    return x


def gather_buffers(x: Padded, plan: Plan, bk: int) -> tuple[Tensor | None, Tensor | None]:
    """Buffers for the key/value blocks of gathered (non-strided) segments, reused by all."""
    n = plan.max_tiles(gathered=True)
    if n == 0:
        return None, None
    B, H, _, D = x.k.shape
    return x.k.new_empty(n * B * H * bk * D), x.v.new_empty(n * B * H * bk * x.v.shape[-1])


def tile_masks(tc: TileContext, chunk: QueryChunk, seg: Segment) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Index tensors of the tile and the allowed-mask of each partial run."""
    qi, ki = tc.q_index(chunk.q_blocks), tc.kv_index(seg.k_blocks)
    oks = [tc.allowed(tc.b5, tc.h5, qi, ki[..., p0 * tc.bk: p1 * tc.bk]) for p0, p1 in seg.masked]
    return qi, ki, oks


def head_view(t: Tensor, i: int | None, j: int | None) -> Tensor:
    """Batch i, head j of a (B|1, H|1, ...) tensor as (1, 1, ...) (all of it when i is None)."""
    if i is None or j is None:
        return t
    bi, hj = min(i, t.shape[0] - 1), min(j, t.shape[1] - 1)
    return t[bi: bi + 1, hj: hj + 1]


def _tile_softmax(tc: TileContext, s: Tensor, seg: Segment, oks: list[Tensor], idx: tuple[Tensor, ...]
                  ) -> tuple[Tensor, Tensor]:
    """score_mod, mask, softmax of a tile s (b, h, nb, bq, w·bk), in place; returns (P, lse)."""
    bk = tc.bk
    if tc.modifies:
        s = tc.modify(s, *idx)
    for (p0, p1), ok in zip(seg.masked, oks, strict=True):
        s[..., p0 * bk: p1 * bk].masked_fill_(~ok, NEG_INF)
    m = s.amax(-1, keepdim=True)  # (b, h, nb, bq, 1)
    p = _softmax_(s)  # fused max/exp/sum/scale, in place: the tile stays in cache
    # softmax gives p_max = 1/Σexp(s - m), so lse = m - log(p_max) with no extra pass.
    lse = m - p.amax(-1, keepdim=True).log()
    if seg.masked or tc.modifies:
        empty = m == NEG_INF  # fully masked rows: softmax gave NaN
        if bool(empty.any()):
            p.masked_fill_(empty, 0.0)
            lse.masked_fill_(empty, NEG_INF)
    return p, lse


def _accumulate(acc: Tensor, acc_lse: Tensor, o: Tensor, lse: Tensor, *, first: bool) -> None:
    """acc, acc_lse <- the softmax over both key sets, from their contexts and lse (the online
    softmax merge of key segments, Alg. 1 lines 9-12); o is overwritten."""
    if first:
        acc.copy_(o)
        acc_lse.copy_(lse)
        return
    _, new = merge_partials([(acc, acc_lse[..., 0]), (o, lse[..., 0])], inplace=True)  # lse (..., 1) -> (...)
    acc_lse.copy_(new.unsqueeze(-1))  # (...) -> (..., 1)


def _forward_chunks(tc: TileContext, x: Padded, plan: Plan, scale: float, chunks: Iterable[QueryChunk],
                    out: Tensor, lse: Tensor, sanitize: bool) -> None:
    """Each tile runs head by head (when B·H is small): one head's scores stay in cache from the
    QKᵀ GEMM through mask, softmax and the PV GEMM, and a band is a plain 3-D strided tensor."""
    B, H = x.q.shape[:2]
    bq, bk = plan.bq, plan.bk
    fused = fused_ok(x.q, x.v, tc.modifies, sanitize)
    # One tile buffer reused for every tile: fresh multi-MB tensors would be page-faulted in
    # on every allocation, which costs as much as the softmax itself (the fused op keeps its
    # scores in its own small blocks).
    s_buf = None if fused else x.q.new_empty(plan.max_tiles() * bq * bk * B * H)
    m_buf = x.q.new_empty(plan.max_tiles() * bq * bk) if fused else None  # one head's mask
    k_buf, v_buf = gather_buffers(x, plan, bk)
    for chunk in chunks:
        qc = q_view(x.q, chunk, bq)  # (B, H, nb, bq, D)
        nb = qc.shape[2]
        direct = len(chunk.segments) == 1 and chunk.q_start is not None
        acc = q_view(out, chunk, bq) if direct else x.q.new_empty(B, H, nb, bq, x.v.shape[-1])
        acc_lse = x.q.new_empty(B, H, nb, bq, 1)
        for n_seg, seg in enumerate(chunk.segments):
            kb, vb = band(x.k, seg, bk, k_buf), band(x.v, seg, bk, v_buf)  # (B, H, nb, w·bk, D)
            qi, ki, oks = tile_masks(tc, chunk, seg)
            if fused:  # all heads at once through ATen's fused loop
                o, seg_lse = fused_tile(qc, kb, vb, seg, oks, scale, bk, m_buf)
                _accumulate(acc, acc_lse, o, seg_lse, first=n_seg == 0)
                continue
            assert s_buf is not None  # allocated whenever the tiles are not fused
            if sanitize and seg.masked:
                vb = clean_band(vb, oks, seg, bk)
            for i, j in head_loop(B, H, seg.k_blocks.numel() * bq * bk):
                qh, kh, vh = head_view(qc, i, j), head_view(kb, i, j), head_view(vb, i, j)  # (b, h, nb, ., D)
                shape = (*qh.shape[:4], kh.shape[3])
                s = qk(qh, kh, seg, s_buf[: math.prod(shape)].view(shape), scale)  # (b, h, nb, bq, w·bk)
                idx = ((tc.b5, tc.h5, qi, ki) if i is None or j is None else
                       (tc.b5[i: i + 1], tc.h5[:, j: j + 1], qi, ki))
                p, seg_lse = _tile_softmax(tc, s, seg, [head_view(ok, i, j) for ok in oks], idx)
                acc_h, lse_h = head_view(acc, i, j), head_view(acc_lse, i, j)
                if n_seg == 0:
                    pv(p, vh, seg, acc_h)
                    lse_h.copy_(seg_lse)
                else:
                    _accumulate(acc_h, lse_h, pv(p, vh, seg), seg_lse, first=False)
        if not direct:
            q_write(out, acc, chunk, bq)
        q_write(lse, acc_lse.squeeze(-1), chunk, bq)  # (B, H, nb, bq, 1) -> (B, H, nb, bq)


def forward_pass(tc: TileContext, x: Padded, plan: Plan, scale: float, *, sanitize: bool,
                 threads: int | None = None) -> tuple[Tensor, Tensor]:
    """Returns context (B, H, nQB·bq, Dv) and lse (B, H, nQB·bq); rows without tiles get 0/-inf.
    Query chunks write disjoint rows, so workers need no synchronisation."""
    B, H, Lqp, _ = x.q.shape
    out = x.q.new_empty(B, H, Lqp, x.v.shape[-1])
    lse = x.q.new_full((B, H, Lqp), NEG_INF)
    idle = (plan.counts == 0).nonzero().flatten()  # query blocks that see no key at all
    if idle.numel():
        out.view(B, H, -1, plan.bq, out.shape[-1])[:, :, idle] = 0.0  # (B, H, nQB, bq, Dv)
    run_parallel(lambda part, _: _forward_chunks(tc, x, plan, scale, part, out, lse, sanitize),
                 plan.chunks, threads)
    return out, lse
