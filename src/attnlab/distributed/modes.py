"""The two other ways to split attention over ranks, behind the same function as the ring.

- ``allgather``: every rank gathers all K/V, then attends its own queries (simple; memory and
  bytes O(S) per rank: the reference the ring is checked against).
- ``ulysses``: all-to-all from sequence shards to head shards (DeepSpeed-Ulysses, Jacobs et al.
  2023): each rank attends the whole sequence for H/P heads, then all-to-all back. Bytes per
  rank O(S·H·D/P) each way, independent of the mask; needs H and Hkv divisible by P.

Both differentiate through collectives.py (the backward of each collective is the reverse
exchange) and attend with the tiled kernel in global positions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.distributed.collectives import all_gather, all_to_all
from attnlab.distributed.ring import RingConfig, pair_attention


def _global_order(cfg: RingConfig) -> Tensor:
    """(S,) for each row of the rank-order concatenation of shards, its global position."""
    lay = cfg.plan.layout
    n = cfg.q_total // lay.world
    return torch.cat([lay.positions(r, n) for r in range(lay.world)])


def _to_global(x: Tensor, order: Tensor) -> Tensor:
    """Rank-order rows (B, H, S, ...) -> position order."""
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.numel())
    return x.index_select(2, inv)


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def allgather_attention(cfg: RingConfig, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    lay = cfg.plan.layout
    kv_order = torch.cat([lay.positions(r, k.shape[2]) for r in range(lay.world)])
    # (B, Hkv, S, D)
    ks = _to_global(torch.cat(all_gather(k, cfg.group, cfg.timeout).unbind(0), dim=2), kv_order)
    vs = _to_global(torch.cat(all_gather(v, cfg.group, cfg.timeout).unbind(0), dim=2), kv_order)
    if cfg.stats is not None:
        cfg.stats.bytes_sent += (lay.world - 1) * (_nbytes(k) + _nbytes(v))
    outs, lses = [], []  # (B, H, c, Dv), (B, H, c) per local query chunk
    for qc, gi in zip(q.chunk(lay.chunks_per_rank, dim=2), lay.chunks(cfg.rank), strict=True):
        o, lse = pair_attention(cfg, qc, ks, vs, gi * cfg.plan.q_chunk, 0)
        outs.append(o)
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def _seq_to_heads(x: Tensor, world: int, cfg: RingConfig) -> Tensor:
    """(B, H, L/P, D) sequence shard, all heads -> (B, H/P, L, D) all positions (rank order),
    this rank's heads: one all-to-all."""
    B, H, n, D = x.shape
    send = x.reshape(B, world, H // world, n, D).transpose(0, 1).contiguous()  # (P, B, H/P, n, D)
    recv = all_to_all(send, cfg.group, cfg.timeout)  # [r] = rank r's rows of my heads
    return recv.permute(1, 2, 0, 3, 4).reshape(B, H // world, world * n, D)  # (B, H/P, S, D)


def _heads_to_seq(x: Tensor, world: int, cfg: RingConfig) -> Tensor:
    """The inverse: (B, H/P, S, ...) my heads, all positions -> (B, H, S/P, ...) my rows, all heads."""
    B, h, S = x.shape[:3]
    tail = x.shape[3:]
    n = S // world
    send = x.reshape(B, h, world, n, *tail).movedim(2, 0).contiguous()  # (P, B, h, n, ...)
    recv = all_to_all(send, cfg.group, cfg.timeout)  # [r] = my rows of rank r's heads
    return recv.movedim(0, 1).reshape(B, world * h, n, *tail)  # (B, H, n, ...)


def ulysses_attention(cfg: RingConfig, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    P = cfg.plan.world
    qh, kh, vh = (_seq_to_heads(t, P, cfg) for t in (q, k, v))  # (B, H/P, S, D)
    if cfg.stats is not None:
        cfg.stats.bytes_sent += sum(_nbytes(t) for t in (q, k, v)) * (P - 1) // P
    q_order = _global_order(cfg)
    kv_order = torch.cat([cfg.plan.layout.positions(r, k.shape[2]) for r in range(P)])
    qg, kg, vg = _to_global(qh, q_order), _to_global(kh, kv_order), _to_global(vh, kv_order)
    h_off = cfg.rank * qh.shape[1]  # this rank computes heads h_off .. h_off + H/P - 1
    o, lse = pair_attention(cfg, qg, kg, vg, 0, 0, h_off)  # (B, H/P, S, Dv), (B, H/P, S)
    o, lse = o.index_select(2, q_order), lse.index_select(2, q_order)  # back to rank order
    out = _heads_to_seq(o, P, cfg)
    lse_out = _heads_to_seq(lse.unsqueeze(-1), P, cfg).squeeze(-1)
    if cfg.stats is not None:
        cfg.stats.bytes_sent += (_nbytes(out) + _nbytes(lse_out)) * (P - 1) // P
    return out, lse_out
