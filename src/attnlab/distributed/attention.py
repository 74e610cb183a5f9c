"""``ring_attention``: attention over a sequence split across the ranks of a process group."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

from attnlab.distributed.layout import make_layout
from attnlab.distributed.modes import allgather_attention, ulysses_attention
from attnlab.distributed.plan import ring_plan
from attnlab.distributed.ring import CommStats, RingConfig, RingFunction
from attnlab.functional.attention import AttentionOutput, ScoreMod, validate_qkv
from attnlab.functional.evaluator import Evaluator
from attnlab.functional.masks import Mask, as_mask
from attnlab.functional.scores import resolve_scale

Mode = Literal["ring", "allgather", "ulysses"]
MODES: tuple[Mode, ...] = ("ring", "allgather", "ulysses")


def _group_info(group: Any) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "ring_attention: expected an initialised torch.distributed process group, got none; "
            "call torch.distributed.init_process_group('gloo' or 'nccl', ...) first (torchrun sets "
            "the environment for init_method='env://')")
    return dist.get_rank(group), dist.get_world_size(group)


def _check_same_shapes(q: Tensor, k: Tensor, v: Tensor, group: Any, world: int) -> None:
    """Every rank must hold shards of the same shape: one small all_gather, and the same error on
    every rank (no rank waits forever for a peer that already raised)."""
    mine = torch.tensor([*q.shape, *k.shape, v.shape[-1]], dtype=torch.long)
    got = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(got, mine, group=group)
    if any(not torch.equal(g, mine) for g in got):
        desc = "; ".join(f"rank {r}: q {tuple(g[:4].tolist())} k {tuple(g[4:8].tolist())}"
                         for r, g in enumerate(got))
        raise ValueError(f"q/k/v: expected shards of the same shape on every rank, got {desc}")


def ring_attention(q: Tensor, k: Tensor, v: Tensor, *, mask: object = None,
                   score_mod: ScoreMod | None = None, scale: float | None = None, group: Any = None,
                   layout: str = "contiguous", mode: str = "ring",
                   stats: CommStats | None = None) -> AttentionOutput:
    """Attention over a sequence sharded across ``group`` (default: the world).

    q (B, H, Lq/P, D), k (B, Hkv, Lk/P, D), v (B, Hkv, Lk/P, Dv) are this rank's shards along the
    sequence axis (``attnlab.distributed.shard`` cuts them): with ``layout="contiguous"`` rank r
    holds positions [r·L/P, (r+1)·L/P); ``"zigzag"`` gives rank r chunks r and 2P-1-r of 2P,
    which balances causal work. ``mask`` (a mask_mod / Mask) and ``score_mod`` see global
    positions. Returns this rank's rows of the context and lse.

    ``mode``: ``"ring"`` moves K/V shards between ranks, only those some query may see, and
    skips the rest (compute and transfer); ``"allgather"`` gathers all K/V on every rank
    (simple; the reference); ``"ulysses"`` all-to-alls from sequence shards to head shards
    (needs H and Hkv divisible by P). All three are differentiable. ``stats``: a
    :class:`CommStats` to fill with bytes sent and chunk pairs computed on this rank.
    """
    rank, world = _group_info(group)
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    lay = make_layout(layout, world)
    if isinstance(mask, Tensor):
        raise TypeError("mask: expected a mask_mod or Mask in global positions, got a Tensor (a dense "
                        "mask would be Lq x Lk on every rank; express it as a mask_mod)")
    m: Mask | None = None if mask is None else as_mask(mask, "mask")
    if score_mod is not None and not callable(score_mod):
        raise TypeError(f"score_mod: expected a callable(score, b, h, q_idx, kv_idx), got "
                        f"{type(score_mod).__name__}")
    learned = score_mod is not None and Evaluator(1, 1, 1, 1, score_mod=score_mod).captures_grad()
    if mode == "ring" and learned:
        raise ValueError("score_mod: it holds tensors that want gradients (a learned bias table?), which "
                         "mode='ring' does not differentiate; use mode='allgather' or 'ulysses'")
    qkv = validate_qkv(q, k, v)
    # Sent and received as flat buffers: dense layouts (a no-op for shards cut by shard()).
    q4, k4, v4 = qkv.q.contiguous(), qkv.k.contiguous(), qkv.v.contiguous()
    _check_same_shapes(q4, k4, v4, group, world)
    for nm, n in (("q", q4.shape[2]), ("k", k4.shape[2])):
        if n % lay.chunks_per_rank:
            raise ValueError(f"{nm}: expected a shard length divisible by {lay.chunks_per_rank} "
                             f"({layout} layout: two chunks per rank), got {n}")
    if mode == "ulysses" and (q4.shape[1] % world or k4.shape[1] % world):
        raise ValueError(f"mode: 'ulysses' splits heads over {world} ranks, but q has {q4.shape[1]} "
                         f"and k {k4.shape[1]} heads; use mode='ring'")
    plan = ring_plan(m, lay, q4.shape[2], k4.shape[2], batch=q4.shape[0], heads=q4.shape[1])
    cfg = RingConfig(plan, m, score_mod, resolve_scale(scale, q4.shape[-1]), group, rank, stats)
    if mode == "ring":
        out, lse = RingFunction.apply(q4, k4, v4, cfg)
    elif mode == "allgather":
        out, lse = allgather_attention(cfg, q4, k4, v4)
    else:
        out, lse = ulysses_attention(cfg, q4, k4, v4)
    return AttentionOutput(qkv.restore(out), None, qkv.restore(lse))
