"""The tiled kernel as a torch.autograd.Function: backward recomputes tiles (FlashAttention,
Dao et al. 2022, §3.1 "recomputation"), so training memory is linear in the sequence length.

Saved for backward: q, k, v, the padded context and lse - O(L·Dh), never the (Lq, Lk) weights.
The lse output is differentiable too (d lse_i / d s_ij = P_ij), which lets partial attentions
over disjoint key sets be merged by their lse with gradients (sparse.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.backends.tiled.backward import backward_pass
from attnlab.backends.tiled.forward import forward_pass
from attnlab.backends.tiled.fused import fused_ok
from attnlab.backends.tiled.plan import Plan
from attnlab.backends.tiled.tile_ops import Padded, pad_rows
from attnlab.backends.tiled.tiles import TileContext
from attnlab.functional.attention import expand_kv


@dataclass(frozen=True)
class TiledConfig:
    tc: TileContext
    plan: Plan
    scale: float
    sanitize: bool  # k or v hold inf/NaN: zero the keys no row of a tile may see
    capture: bool  # bias / score_mod carry tensors that want gradients
    # The backward's own tile shape: its dK/dV products have bq as inner dimension, so it
    # wants taller tiles than the forward (built on first use: inference never pays).
    backward_setup: Callable[[], tuple[TileContext, Plan]] | None = None


def _padded(q: Tensor, k: Tensor, v: Tensor, p: Plan, expand: bool = True) -> Padded:
    """``expand``: K/V copied out to the query heads (GQA); the fused forward reads the shared
    heads in place instead (fused._call_groups), so it passes False."""
    hq = q.shape[1]
    kp, vp = pad_rows(k, p.n_kv_blocks * p.bk), pad_rows(v, p.n_kv_blocks * p.bk)  # (B, Hkv, nKB·bk, D|Dv)
    return Padded(
        pad_rows(q, p.n_q_blocks * p.bq),  # (B, H, nQB·bq, D)
        expand_kv(kp, hq) if expand else kp,  # (B, H|Hkv, nKB·bk, D)
        expand_kv(vp, hq) if expand else vp,  # (B, H|Hkv, nKB·bk, Dv)
    )


def _reduce_heads(g: Tensor, hkv: int) -> Tensor:
    """Sum the gradients of K/V heads shared by several query heads (GQA)."""
    B, H, L, D = g.shape
    return g if hkv == H else g.view(B, hkv, H // hkv, L, D).sum(2)  # (B, Hkv, L, D)


class TiledAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, anchor: Tensor | None,  # type: ignore[override]
                cfg: TiledConfig) -> tuple[Tensor, Tensor]:
        # ``anchor``: a tensor that wants gradients through the bias / score_mod, passed in only
        # so that autograd calls backward when q, k and v themselves do not need gradients.
        fused = fused_ok(q, v, cfg.tc.modifies, cfg.sanitize)
        x = _padded(q, k, v, cfg.plan, expand=not fused)
        out, lse = forward_pass(cfg.tc, x, cfg.plan, cfg.scale, sanitize=cfg.sanitize)
        lq = q.shape[2]
        out, lse = out[:, :, :lq].contiguous(), lse[:, :, :lq].contiguous()
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.cfg = cfg
        return out, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout: Tensor, dlse: Tensor | None):  # type: ignore[override]
        q, k, v, out, lse = ctx.saved_tensors
        cfg: TiledConfig = ctx.cfg
        tc, plan = cfg.backward_setup() if cfg.backward_setup is not None else (cfg.tc, cfg.plan)
        x = _padded(q, k, v, plan)
        rows = plan.n_q_blocks * plan.bq
        pad = (0, rows - out.shape[2])
        dout_p, out_p = pad_rows(dout, rows), pad_rows(out, rows)  # padding rows: zero gradient
        lse_p = F.pad(lse, pad, value=float("-inf"))
        dlse_p = None if dlse is None else F.pad(dlse, pad)
        dq, dk, dv = backward_pass(tc, x, plan, cfg.scale, out_p, lse_p, dout_p, dlse_p,
                                   sanitize=cfg.sanitize, capture=cfg.capture)
        lq, lk, hkv = q.shape[2], k.shape[2], k.shape[1]
        dq = dq[:, :, :lq]
        return (dq, _reduce_heads(dk[:, :, :lk], hkv), _reduce_heads(dv[:, :, :lk], hkv), None, None)


def backward_at(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor,
                dlse: Tensor | None, tc: TileContext, plan: Plan, scale: float, sanitize: bool
                ) -> tuple[Tensor, Tensor, Tensor]:
    """dq, dk, dv of attention whose context and lse are ``out`` and ``lse`` (the backward of
    TiledAttentionFunction without its forward). Given a *global* out and lse, merged over
    several key blocks, it yields one block's share: P = exp(S - lse) and D = rowsum(dO ∘ O)
    are then the whole softmax's (ring attention's backward; Liu et al. 2023)."""
    x = _padded(q, k, v, plan)
    rows = plan.n_q_blocks * plan.bq
    pad = (0, rows - out.shape[2])
    lse_p = F.pad(lse, pad, value=float("-inf"))
    dlse_p = None if dlse is None else F.pad(dlse, pad)
    dq, dk, dv = backward_pass(tc, x, plan, scale, pad_rows(out, rows), lse_p, pad_rows(dout, rows), dlse_p,
                               sanitize=sanitize, capture=False)
    lq, lk, hkv = q.shape[2], k.shape[2], k.shape[1]
    return dq[:, :, :lq], _reduce_heads(dk[:, :, :lk], hkv), _reduce_heads(dv[:, :, :lk], hkv)


def tiled_function(q: Tensor, k: Tensor, v: Tensor, cfg: TiledConfig) -> tuple[Tensor, Tensor]:
    """context (B, H, Lq, Dv) and lse (B, H, Lq); differentiable w.r.t. q, k, v."""
    anchor = None
    if cfg.capture and torch.is_grad_enabled():
        bias = cfg.tc.bias
        anchor = bias if bias is not None and bias.requires_grad else torch.zeros(0, requires_grad=True)
    return TiledAttentionFunction.apply(q, k, v, anchor, cfg)
