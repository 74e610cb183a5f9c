"""``ring_attention``: attention over a sequence split across the ranks of a process group."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import torch.distributed as dist
from torch import Tensor

from attnlab.distributed.agreement import (
    agree,
    mask_fingerprint,
    sample_positions,
    score_mod_fingerprint,
)
from attnlab.distributed.layout import Layout, make_layout
from attnlab.distributed.modes import allgather_attention, ulysses_attention
from attnlab.distributed.plan import ring_plan
from attnlab.distributed.ring import CommStats, RingConfig, RingFunction
from attnlab.functional.attention import AttentionOutput, ScoreMod, validate_qkv
from attnlab.functional.evaluator import Evaluator
from attnlab.functional.masks import Mask, as_mask
from attnlab.functional.scores import resolve_scale

Mode = Literal["ring", "allgather", "ulysses"]
MODES: tuple[Mode, ...] = ("ring", "allgather", "ulysses")
DEFAULT_TIMEOUT = 120.0  # seconds any wait for another rank may take (gloo's own default: 30 min)


def _group_info(group: Any) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "ring_attention: expected an initialised torch.distributed process group, got none; "
            "call torch.distributed.init_process_group('gloo' or 'nccl', ...) first (torchrun sets "
            "the environment for init_method='env://')")
    return dist.get_rank(group), dist.get_world_size(group)


@dataclass(frozen=True)
class _Checked:
    q: Tensor
    k: Tensor
    v: Tensor
    mask: Mask | None
    layout: Layout
    scale: float
    restore: Callable[[Tensor], Tensor]
    signature: dict[str, Any]


def _check_local(q: Tensor, k: Tensor, v: Tensor, mask: object, score_mod: ScoreMod | None,
                 scale: float | None, layout: str, mode: str, world: int) -> _Checked:
    """This rank's own checks, and the description of its call the ranks compare."""
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
    if qkv.q.device.type != "cpu":  # each rank computes its chunk pairs with the CPU-only tiled kernel
        raise ValueError(f"q: expected CPU tensors (ring_attention computes on attnlab's CPU tiled kernel), "
                         f"got tensors on {qkv.q.device}")
    # Sent and received as flat buffers: dense layouts (a no-op for shards cut by shard()).
    q4, k4, v4 = qkv.q.contiguous(), qkv.k.contiguous(), qkv.v.contiguous()
    for nm, n in (("q", q4.shape[2]), ("k", k4.shape[2])):
        if n % lay.chunks_per_rank:
            raise ValueError(f"{nm}: expected a shard length divisible by {lay.chunks_per_rank} "
                             f"({layout} layout: two chunks per rank), got {n}")
    if mode == "ulysses" and (q4.shape[1] % world or k4.shape[1] % world):
        raise ValueError(f"mode: 'ulysses' splits heads over {world} ranks, but q has {q4.shape[1]} "
                         f"and k {k4.shape[1]} heads; use mode='ring'")
    sc = resolve_scale(scale, q4.shape[-1])
    q_total, kv_total = q4.shape[2] * world, k4.shape[2] * world
    sample = sample_positions(q4.shape[0], q4.shape[1], q_total, kv_total)
    sig = {"shapes": [list(q4.shape), list(k4.shape), list(v4.shape)],
           "dtypes": [str(t.dtype).removeprefix("torch.") for t in (q4, k4, v4)],
           "layout": layout, "mode": mode, "scale": repr(sc),
           "mask": mask_fingerprint(m, sample, q_total, kv_total),
           "score_mod": score_mod_fingerprint(score_mod, sample)}
    return _Checked(q4, k4, v4, m, lay, sc, qkv.restore, sig)


def _timeout(timeout: object) -> timedelta:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0 \
            or not math.isfinite(timeout):
        raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    return timedelta(seconds=float(timeout))


def ring_attention(q: Tensor, k: Tensor, v: Tensor, *, mask: object = None,
                   score_mod: ScoreMod | None = None, scale: float | None = None, group: Any = None,
                   layout: str = "contiguous", mode: str = "ring",
                   stats: CommStats | None = None, timeout: float = DEFAULT_TIMEOUT) -> AttentionOutput:
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

    Every rank must make the same call: shapes, dtypes, ``layout``, ``mode``, ``scale`` and
    fingerprints of ``mask`` and ``score_mod`` are compared first (agreement.py), and a
    difference, or an argument one rank refuses, is the same error on every rank. ``timeout``
    (seconds, default 120) bounds every wait for another rank, so a rank that never calls is
    a ``TimeoutError``, not a hang until the process group's own timeout (30 min by default);
    raise it when one chunk pair takes longer than that to compute.
    """
    rank, world = _group_info(group)
    checked: _Checked | None = None
    error: BaseException | None = None
    try:
        wait = _timeout(timeout)
    except ValueError as e:  # still compare, so the other ranks hear of it instead of waiting
        wait, error = timedelta(seconds=DEFAULT_TIMEOUT), e
    if error is None:
        try:
            checked = _check_local(q, k, v, mask, score_mod, scale, layout, mode, world)
        except Exception as e:
            error = e
    agree({} if checked is None else checked.signature, error, group, rank, world, wait)
    assert checked is not None  # agree() raised otherwise
    q4, k4, v4, m, lay = checked.q, checked.k, checked.v, checked.mask, checked.layout
    plan = ring_plan(m, lay, q4.shape[2], k4.shape[2], batch=q4.shape[0], heads=q4.shape[1])
    cfg = RingConfig(plan, m, score_mod, checked.scale, group, rank, stats, wait)
    if mode == "ring":
        out, lse = RingFunction.apply(q4, k4, v4, cfg)
    elif mode == "allgather":
        out, lse = allgather_attention(cfg, q4, k4, v4)
    else:
        out, lse = ulysses_attention(cfg, q4, k4, v4)
    return AttentionOutput(checked.restore(out), None, checked.restore(lse))
