"""Ring attention (Liu et al. 2023) on torch.distributed, skipping what the mask makes useless.

Each rank holds a shard of q, k and v along the sequence axis (layout.py). K/V shards travel
between ranks (plan.py says which rank needs which, and at which hop); each rank attends its
queries to every key shard it needs with the tiled kernel, chunk pair by chunk pair, masks and
score_mods seeing global positions (masks.shifted), and merges the partial results by their
log-sum-exp, the merge of the online softmax (Milakov & Gimelshein 2018; FlashAttention):

    lse = log Σ_j exp(lse_j),   out = Σ_j exp(lse_j - lse) · out_j

Backward (a custom autograd Function) fetches the K/V shards again and runs, per chunk pair,
the tiled backward at the global out and lse (FlashAttention Alg. 2 with P = exp(S - lse) and
D = rowsum(dO ∘ O) of the whole softmax), so no forward is recomputed and nothing of size
Lq x Lk exists anywhere; dK/dV partials go back to the shard's owner.
Rows that see no key anywhere give zeros and lse = -inf, never NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from attnlab.backends.dispatch import attention
from attnlab.backends.tiled import attention_backward
from attnlab.distributed.agreement import wait_all
from attnlab.distributed.plan import RingPlan
from attnlab.functional.attention import ScoreMod
from attnlab.functional.masks import Mask, shifted
from attnlab.functional.softmax import merge_partials

TAG_K, TAG_V, TAG_DK, TAG_DV = 0, 1, 2, 3


@dataclass
class CommStats:
    """What one call moved and computed on this rank (fill it by passing ``stats=``)."""

    bytes_sent: int = 0  # forward K/V sends
    bytes_sent_backward: int = 0  # backward K/V re-sends plus dK/dV returned to owners
    hops: list[int] = field(default_factory=list)  # hop distances with any transfer or compute
    pairs: int = 0  # chunk pairs computed in the forward


@dataclass(frozen=True)
class RingConfig:
    plan: RingPlan
    mask: Mask | None
    score_mod: ScoreMod | None
    scale: float
    group: Any  # a torch.distributed ProcessGroup (None: the default group)
    rank: int
    stats: CommStats | None
    timeout: timedelta = timedelta(seconds=120)  # any wait for a peer (agreement.wait_all)

    @property
    def q_total(self) -> int:  # global query length
        return self.plan.q_chunk * self.plan.layout.n_chunks

    @property
    def kv_total(self) -> int:  # global key length
        return self.plan.kv_chunk * self.plan.layout.n_chunks


@lru_cache(maxsize=128)
def _window(mask: Mask, q_off: int, kv_off: int, q_total: int, kv_total: int) -> Mask:
    # One Mask object per chunk pair and shape, so its block map is built once (cached by id).
    return shifted(mask, q_off, kv_off, q_total, kv_total)


def _global_score_mod(score_mod: ScoreMod, q_off: int, kv_off: int, h_off: int) -> ScoreMod:
    def mod(s: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return score_mod(s, b, h + h_off, q + q_off, kv + kv_off)
    return mod


@lru_cache(maxsize=32)
def _head_window(mask: Mask, h_off: int) -> Mask:
    # Heads h_off.. of the mask (head-parallel modes); block maps are unions over heads anyway,
    # so the pattern's answers still hold.
    return Mask(lambda b, h, q, kv, lq, lk: mask.evaluate(b, h + h_off, q, kv, lq, lk),
                f"{mask.name}[h+{h_off}]", mask.pattern)


def _pair_mods(cfg: RingConfig, q_off: int, kv_off: int, h_off: int) -> tuple[Mask | None, ScoreMod | None]:
    """The mask and score_mod of one block of queries x keys, in global positions (and heads)."""
    m = None if cfg.mask is None else _window(cfg.mask, q_off, kv_off, cfg.q_total, cfg.kv_total)
    if m is not None and h_off:
        m = _head_window(m, h_off)
    sm = None if cfg.score_mod is None else _global_score_mod(cfg.score_mod, q_off, kv_off, h_off)
    return m, sm


def pair_attention(cfg: RingConfig, q: Tensor, k: Tensor, v: Tensor, q_off: int, kv_off: int,
                   h_off: int = 0) -> tuple[Tensor, Tensor]:
    """Queries (B, H, c, D) from global position ``q_off`` against keys (B, Hkv, c', D) from
    ``kv_off`` (and heads from ``h_off``): the mask and score_mod see global positions."""
    m, sm = _pair_mods(cfg, q_off, kv_off, h_off)
    out = attention(q, k, v, mask=m, score_mod=sm, scale=cfg.scale, backend="tiled")
    assert out.lse is not None  # tiled always returns lse
    return out.context, out.lse


def _peer(cfg: RingConfig, group_rank: int) -> int:
    return group_rank if cfg.group is None else dist.get_global_rank(cfg.group, group_rank)


def _exchange(cfg: RingConfig, sends: list[tuple[Tensor, int, int]], recvs: list[tuple[Tensor, int, int]]
              ) -> list[Any]:
    """Post (tensor, group rank, tag) sends and receives at once; returns the works to wait on."""
    ops = [dist.P2POp(dist.isend, t, _peer(cfg, r), cfg.group, tag) for t, r, tag in sends]
    ops += [dist.P2POp(dist.irecv, t, _peer(cfg, r), cfg.group, tag) for t, r, tag in recvs]
    return dist.batch_isend_irecv(ops) if ops else []


def _nbytes(*ts: Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


Started = tuple[list[Any], tuple[Tensor, Tensor] | None, int]


def _start_kv(cfg: RingConfig, k: Tensor, v: Tensor, hop: int, into: tuple[Tensor, Tensor] | None
              ) -> Started:
    """Begin hop ``hop``'s K/V transfer, receiving ``into`` the given buffers: (works, the K/V this
    rank will use or None, bytes sent). Buffers are reused across hops: a rank holds its own
    shard plus at most two others, whatever the number of hops."""
    p, r, P = cfg.plan, cfg.rank, cfg.plan.world
    if hop == 0:
        return [], ((k, v) if p.receives(r, 0) else None), 0
    sends, recvs, got = [], [], None
    if p.sends(r, hop):
        dst = (r + hop) % P
        sends = [(k, dst, TAG_K), (v, dst, TAG_V)]
    if p.receives(r, hop):
        src = (r - hop) % P
        got = into if into is not None else (torch.empty_like(k), torch.empty_like(v))
        recvs = [(got[0], src, TAG_K), (got[1], src, TAG_V)]
    return _exchange(cfg, sends, recvs), got, (_nbytes(k, v) if sends else 0)


def _chunks(x: Tensor, n: int) -> list[Tensor]:
    return list(x.chunk(n, dim=2))  # (B, H, L, D) -> n x (B, H, L/n, D), views


def ring_forward(cfg: RingConfig, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    p, r = cfg.plan, cfg.rank
    cpr = p.layout.chunks_per_rank
    qs = _chunks(q, cpr)
    B, H, c, _ = qs[0].shape
    outs = [q.new_zeros(B, H, c, v.shape[-1]) for _ in qs]  # (B, H, c, Dv) per local chunk
    lses = [torch.full((B, H, c), float("-inf"), dtype=torch.float32 if q.dtype != torch.float64
                       else torch.float64) for _ in qs]
    hops = p.hops()
    bufs = [(torch.empty_like(k), torch.empty_like(v)) for _ in range(min(2, len(hops) - 1))]
    pending = _start_kv(cfg, k, v, hops[0], None) if hops else ([], None, 0)
    for idx, hop in enumerate(hops):
        works, kv, sent = pending
        if idx + 1 < len(hops):  # prefetch the next hop's shard while this one computes
            pending = _start_kv(cfg, k, v, hops[idx + 1], bufs[idx % 2] if bufs else None)
        wait_all(works, cfg.timeout, f"K/V transfer at hop {hop}")
        if cfg.stats is not None:
            cfg.stats.bytes_sent += sent
            cfg.stats.hops.append(hop)
        if kv is None:
            continue
        ks, vs = _chunks(kv[0], cpr), _chunks(kv[1], cpr)
        for a, gi, b, gj in p.pairs(r, (r - hop) % p.world):
            o_p, lse_p = pair_attention(cfg, qs[a], ks[b], vs[b], gi * p.q_chunk, gj * p.kv_chunk)
            # the online-softmax merge, in place in outs[a] (and o_p); -inf rows stay exact zeros
            merged = [(outs[a], lses[a].to(lse_p.dtype)), (o_p, lse_p)]
            outs[a], lses[a] = merge_partials(merged, inplace=True)
            if cfg.stats is not None:
                cfg.stats.pairs += 1
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)  # (B, H, Lq, Dv), (B, H, Lq)


def pair_grads(cfg: RingConfig, q: Tensor, k: Tensor, v: Tensor, q_off: int, kv_off: int, out: Tensor,
               lse: Tensor, dout: Tensor, dlse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """dq, dk, dv of one chunk pair: the tiled backward run at the *global* out and lse of these
    rows (FlashAttention's P = exp(S - lse) and D = rowsum(dO ∘ O) are then the whole softmax's),
    so no forward is recomputed and nothing is merged."""
    m, sm = _pair_mods(cfg, q_off, kv_off, 0)
    return attention_backward(q, k, v, out, lse, dout, dlse, mask=m, score_mod=sm, scale=cfg.scale)


def ring_backward(cfg: RingConfig, saved: tuple[Tensor, ...], dout: Tensor, dlse: Tensor | None
                  ) -> tuple[Tensor, Tensor, Tensor]:
    q, k, v, out, lse = saved
    p, r, P = cfg.plan, cfg.rank, cfg.plan.world
    cpr = p.layout.chunks_per_rank
    dlse = torch.zeros_like(lse) if dlse is None else dlse
    qs, outs, douts = _chunks(q, cpr), _chunks(out, cpr), _chunks(dout, cpr)
    lses, dlses = list(lse.chunk(cpr, dim=2)), list(dlse.chunk(cpr, dim=2))  # (B, H, c) each
    dq = torch.zeros_like(q)
    dk, dv = torch.zeros_like(k), torch.zeros_like(v)
    dqs = _chunks(dq, cpr)
    far = any(h > 0 for h in p.hops())
    # Reused every hop: the received K/V (then the dK/dV coming back to us) and our partials.
    buf = (torch.empty_like(k), torch.empty_like(v)) if far else None
    part = (torch.empty_like(k), torch.empty_like(v)) if far else None
    for hop in p.hops():
        works, kv, sent = _start_kv(cfg, k, v, hop, buf)
        wait_all(works, cfg.timeout, f"K/V transfer at hop {hop} (backward)")
        sent_back = 0
        pk, pv = (dk, dv) if hop == 0 or part is None else part
        if kv is not None:
            if hop > 0:
                pk.zero_()
                pv.zero_()
            src = (r - hop) % P
            ks, vs, pks, pvs = _chunks(kv[0], cpr), _chunks(kv[1], cpr), _chunks(pk, cpr), _chunks(pv, cpr)
            for a, gi, b, gj in p.pairs(r, src):
                g = pair_grads(cfg, qs[a], ks[b], vs[b], gi * p.q_chunk, gj * p.kv_chunk, outs[a], lses[a],
                               douts[a], dlses[a])
                dqs[a] += g[0]
                pks[b] += g[1]
                pvs[b] += g[2]
        if hop > 0 and buf is not None:  # partials back to the owner; ours come back from their user
            owner, user = (r - hop) % P, (r + hop) % P
            sends = [(pk, owner, TAG_DK), (pv, owner, TAG_DV)] if kv is not None else []
            back = p.sends(r, hop)
            recvs = [(buf[0], user, TAG_DK), (buf[1], user, TAG_DV)] if back else []
            wait_all(_exchange(cfg, sends, recvs), cfg.timeout, f"dK/dV return at hop {hop}")
            if back:
                dk += buf[0]
                dv += buf[1]
            sent_back = _nbytes(k, v) if kv is not None else 0
        if cfg.stats is not None:
            cfg.stats.bytes_sent_backward += sent + sent_back
    return dq, dk, dv


class RingFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, cfg: RingConfig) -> tuple[Tensor, Tensor]:
        out, lse = ring_forward(cfg, q, k, v)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.cfg = cfg
        return out, lse

    @staticmethod
    def backward(ctx: Any, dout: Tensor, dlse: Tensor | None) -> tuple[Tensor, Tensor, Tensor, None]:
        dq, dk, dv = ring_backward(ctx.cfg, ctx.saved_tensors, dout, dlse)
        return dq, dk, dv, None

