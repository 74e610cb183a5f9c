"""One batched tile through ATen's fused CPU flash-attention kernel.

The plain-op tile (forward.forward_tile) is ~8 PyTorch ops, each a pass over the score
tile; their passes, not the GEMMs, are what keeps it below SDPA's speed. ATen ships the fused
loop that SDPA uses on a CPU (``aten::_scaled_dot_product_flash_attention_for_cpu``: QKᵀ,
additive mask, online softmax and PV per 2-D block, in cache, and it returns the lse). It
takes arbitrary batch strides, so a tile's query blocks and its key bands (strided views,
overlapping for sliding windows) go in as (B·H, nb, rows, D) without a copy; the block map
still decides which keys each query block reads. Used for the forward only when nothing needs
the plain path: no score_mod or bias, finite k/v, and the op present and checked at import;
the backward stays on recomputed tiles (backward.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.backends.tiled.plan import Segment
from attnlab.backends.tiled.tile_ops import NEG_INF

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _op(suffix: str = ""):  # the op, or None on a torch without it
    ops = getattr(torch.ops, "aten", None)
    return getattr(ops, "_scaled_dot_product_flash_attention_for_cpu" + suffix, None) if ops else None


def _op_backward():
    return _op("_backward")


def _self_check() -> tuple[bool, bool]:
    """(forward, backward) usable: the ops must give the exact masked softmax and its gradients
    on strided, masked input with an empty row (they are private ATen ops: their contract is
    checked here rather than assumed)."""
    fwd, bwd = _op(), _op_backward()
    if fwd is None:
        return False, False
    # It may first run inside a caller's no_grad / inference_mode (a model's forward): the check
    # needs autograd for its reference gradients whatever the caller's mode.
    with torch.inference_mode(False), torch.enable_grad():
        return _check_ops(fwd, bwd)


def _check_ops(fwd, bwd) -> tuple[bool, bool]:
    try:
        g = torch.Generator().manual_seed(0)
        q = torch.randn(2, 3, 40, 16, generator=g, dtype=torch.float64, requires_grad=True)
        big = torch.randn(2, 3, 120, 16, generator=g, dtype=torch.float64)
        k = big[:, :, ::2].requires_grad_(True)  # strided rows
        allowed = torch.rand(1, 3, 40, 60, generator=g) > 0.4
        allowed[:, :, 7] = False  # a row that sees nothing
        add = torch.zeros(allowed.shape, dtype=torch.float64).masked_fill_(~allowed, NEG_INF)
        s = (q @ k.transpose(-1, -2) * 0.3).masked_fill(~allowed, NEG_INF)
        ref_lse = torch.logsumexp(s, -1)
        ref = torch.softmax(s, -1).nan_to_num() @ k
        out, lse = fwd(q.detach(), k.detach(), k.detach(), attn_mask=add, scale=0.3)
        seen = torch.isfinite(ref_lse)
        ok_fwd = bool(torch.allclose(out, ref)) and bool(torch.allclose(lse[seen], ref_lse[seen]))
        if not ok_fwd or bwd is None:
            return ok_fwd, False
        go = torch.randn(out.shape, generator=g, dtype=torch.float64)
        want = torch.autograd.grad(ref, (q, k), go)
        lse_r = torch.where(seen, lse, torch.full_like(lse, float("inf")))
        qd, kd = q.detach(), k.detach()
        dq, dk, dv = bwd(go, qd, kd, kd, out, lse_r, 0.0, False, attn_mask=add, scale=0.3)
        return True, bool(torch.allclose(dq, want[0])) and bool(torch.allclose(dk + dv, want[1]))
    except (RuntimeError, TypeError):
        return False, False


def __getattr__(name: str) -> bool:
    """``AVAILABLE`` / ``AVAILABLE_BACKWARD``: the self-check runs once, on first use, not at
    import (its autograd call makes torch import sympy: ~1 s nobody who never tiles should pay)."""
    if name in ("AVAILABLE", "AVAILABLE_BACKWARD"):
        fwd, bwd = _self_check()
        globals().update(AVAILABLE=fwd, AVAILABLE_BACKWARD=bwd)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def fused_available() -> bool:
    """The fused forward op is present and passed its check (run on first call)."""
    return _flag("AVAILABLE")


def _flag(name: str) -> bool:
    g = globals()  # a bare name would not reach the module __getattr__
    return bool(g[name]) if name in g else __getattr__(name)


def fused_ok(q: Tensor, v: Tensor, modifies: bool, sanitize: bool) -> bool:
    """The op's own limits (one head size for q, k and v; float dtypes), and nothing that needs
    the plain path (a score_mod or bias between QKᵀ and softmax; non-finite k/v to clean)."""
    return (_flag("AVAILABLE") and q.dtype in _DTYPES and q.shape[-1] == v.shape[-1]
            and q.device.type == "cpu" and not modifies and not sanitize)


def fused_backward_ok(q: Tensor, v: Tensor, modifies: bool, sanitize: bool, dlse: Tensor | None,
                      capture: bool) -> bool:
    """As :func:`fused_ok`; besides, the op has no input for a gradient that reaches the lse
    itself (merged sparse parts), nor for tensors inside a score_mod."""
    return (_flag("AVAILABLE_BACKWARD") and fused_ok(q, v, modifies, sanitize) and not capture
            and (dlse is None or not bool(dlse.any())))


def _rows4(x: Tensor) -> Tensor | None:
    """(B, H, nb, L, D) -> (B·H, nb, L, D) as a view, or None where B and H do not merge
    (residue-class views, whose H axis is interleaved with the rows)."""
    try:
        return x.view(x.shape[0] * x.shape[1], *x.shape[2:])  # (B·H, nb, L, D)
    except RuntimeError:
        return None


def additive_mask(seg: Segment, oks: list[Tensor], batch: int, heads: int, bq: int, bk: int,
                  dtype: torch.dtype, buf: Tensor | None = None) -> Tensor | None:
    """The band's mask as the additive float mask the op takes, (B·H|1, nb|1, bq, w·bk), or None
    for a band of full tiles. The op broadcasts a leading 1 only: a mask that depends on the
    batch or the head is spread over all B·H. Where every query block of the tile has the same
    mask (a sliding window's blocks all see their band alike), one block's mask serves all."""
    if not seg.masked:
        return None
    nb, w = seg.k_blocks.shape
    if nb > 1 and all(torch.equal(ok[:, :, :1].expand_as(ok), ok) for ok in oks):
        oks, nb = [ok[:, :, :1] for ok in oks], 1  # (B|1, H|1, 1, bq, run·bk)
    mb = max(ok.shape[0] for ok in oks)
    mh = max(ok.shape[1] for ok in oks)
    size = mb * mh * nb * bq * w * bk
    if buf is not None and buf.numel() >= size and buf.dtype == dtype:  # reused: no page faults
        add = buf[:size].view(mb, mh, nb, bq, w * bk).zero_()  # (B|1, H|1, nb, bq, w·bk)
    else:
        add = torch.zeros(mb, mh, nb, bq, w * bk, dtype=dtype)
    for (p0, p1), ok in zip(seg.masked, oks, strict=True):
        add[..., p0 * bk: p1 * bk].masked_fill_(~ok, NEG_INF)
    if mb * mh == 1:
        return add[0]
    return add.expand(batch, heads, -1, -1, -1).reshape(batch * heads, nb, bq, w * bk)  # (B·H, nb, bq, w·bk)


def _shaped(qc: Tensor, kb: Tensor, vb: Tensor, seg: Segment, add: Tensor | None
            ) -> tuple[Tensor, Tensor, Tensor]:
    """A band of full tiles that every query block shares is one tall problem (B, H, 1, nb·bq, D)."""
    if seg.shared and add is None:
        B, H, nb, bq, D = qc.shape
        return qc.reshape(B, H, 1, nb * bq, D), kb[:, :, :1], vb[:, :, :1]  # q (B, H, 1, nb·bq, D)
    return qc, kb, vb


def _call(op, tensors: tuple[Tensor, ...], add: Tensor | None, heads: int, **kw) -> tuple[Tensor, ...]:
    """op on (B, H, nb, L, D) tensors as (B·H, nb, L, D) views, or one call per batch element
    where B and H do not merge; results come back as (B, H, nb, L, ...). Keys and values may
    have fewer heads (GQA, not copied out to the query heads): :func:`_call_groups`."""
    B = tensors[0].shape[0]
    if any(t.shape[1] != heads for t in tensors):  # K/V shared by query heads (GQA)
        if (add is None or add.shape[0] == 1) and len(tensors) == 3:  # the forward, one mask
            return _call_groups(op, tensors, add, heads, **kw)
        return _call_grouped(op, tensors, add, heads, **kw)
    flat = [_rows4(t) for t in tensors]
    if all(t is not None for t in flat):
        res = op(*flat, attn_mask=add, **kw)
        return tuple(r.view(B, heads, *r.shape[1:]) for r in res)  # (B·H, ...) -> (B, H, ...)
    per = [op(*(t[b] for t in tensors), attn_mask=add if add is None or add.shape[0] == 1
              else add[b * heads: (b + 1) * heads], **kw) for b in range(B)]
    return tuple(torch.stack(rs) for rs in zip(*per, strict=True))


def _call_groups(op, tensors: tuple[Tensor, ...], add: Tensor | None, heads: int, **kw) -> tuple[Tensor, ...]:
    """GQA packed (FlashAttention-2's "pack GQA"): the ``g = H / Hkv`` query heads that share a
    K/V head are stacked into the rows of one problem per (batch element, K/V head), q as
    (nb, g·bq, D) against the shared band, which is read once for all g heads and never copied
    out to them. ``add`` is the same for every head, (1, nb|1, bq, w·bk) (additive_mask).
    Context (B, H, nb, bq, Dv) and lse (B, H, nb, bq) come back as views where B·Hkv = 1."""
    q, k, v = tensors
    B, H, nb, bq, D = q.shape
    hkv = k.shape[1]
    g = heads // hkv
    # (1, nb|1, bq, w·bk) -> (1, nb|1, g·bq, w·bk): packed row j·bq + i is row i of head j
    mask = None if add is None else add.repeat(1, 1, g, 1)
    outs, lses = [], []
    for b in range(B):
        for h in range(hkv):
            qh = q[b, h * g: (h + 1) * g]  # (g, nb, bq, D)
            qp = qh.transpose(0, 1).reshape(1, nb, g * bq, D)  # (g, nb, bq, D) -> (1, nb, g·bq, D)
            o, lse = op(qp, k[b, h: h + 1], v[b, h: h + 1], attn_mask=mask, **kw)[:2]
            outs.append(o.view(nb, g, bq, -1).transpose(0, 1))  # (1, nb, g·bq, Dv) -> (g, nb, bq, Dv)
            lses.append(lse.view(nb, g, bq).transpose(0, 1))  # (1, nb, g·bq) -> (g, nb, bq)
    if len(outs) == 1:
        return outs[0].view(B, H, nb, bq, -1), lses[0].view(B, H, nb, bq)
    return torch.cat(outs).view(B, H, nb, bq, -1), torch.cat(lses).view(B, H, nb, bq)


def _call_grouped(op, tensors: tuple[Tensor, ...], add: Tensor | None, heads: int,
                  **kw) -> tuple[Tensor, ...]:
    """GQA with a mask that depends on the batch element or head: one call per (batch element,
    K/V head) with its ``g`` query heads as the op's batch over a stride-0 view of the K/V band
    (query head h reads K/V head h // g, so no single stride spans every head)."""
    B = tensors[0].shape[0]
    hkv = min(t.shape[1] for t in tensors)
    g = heads // hkv
    per = []
    for b in range(B):
        for h in range(hkv):
            args = [t[b, h * g: (h + 1) * g] if t.shape[1] == heads
                    else t[b, h: h + 1].expand(g, *t.shape[2:]) for t in tensors]  # (g, nb, L, D)
            r0 = b * heads + h * g
            m = add if add is None or add.shape[0] == 1 else add[r0: r0 + g]
            per.append(op(*args, attn_mask=m, **kw))
    # (g, nb, ...) per group -> (B, H, nb, ...)
    return tuple(torch.cat(rs).view(B, heads, *rs[0].shape[1:]) for rs in zip(*per, strict=True))


def _empty_rows(seg: Segment, oks: list[Tensor]) -> Tensor | None:
    """(B|1, H|1, nb, bq, 1) True where a row sees no key of the band, or None when every row
    sees some (a band with at least one full tile)."""
    if sum(p1 - p0 for p0, p1 in seg.masked) < seg.k_blocks.shape[1]:
        return None
    return ~torch.stack([ok.any(-1) for ok in oks]).any(0).unsqueeze(-1)  # (parts, ..., bq) -> (..., bq, 1)


def fused_tile(qc: Tensor, kb: Tensor, vb: Tensor, seg: Segment, oks: list[Tensor], scale: float,
               bk: int, mask_buf: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Context (B, H, nb, bq, Dv) and lse (B, H, nb, bq, 1) of one batched tile; rows that see
    no key get 0 and -inf. ``mask_buf``: scratch memory for the additive mask."""
    B, H, nb, bq, _ = qc.shape
    add = additive_mask(seg, oks, B, H, bq, bk, qc.dtype, mask_buf)
    out, lse = _call(_op(), _shaped(qc, kb, vb, seg, add), add, H, scale=scale)
    out = out.reshape(B, H, nb, bq, out.shape[-1])  # (B, H, 1|nb, nb·bq|bq, Dv) -> (B, H, nb, bq, Dv)
    lse = lse.reshape(B, H, nb, bq, 1)  # (B, H, 1|nb, nb·bq|bq) -> (B, H, nb, bq, 1)
    empty = _empty_rows(seg, oks)
    if empty is not None:
        lse = lse.masked_fill(empty, NEG_INF)  # the op reports 0 for an empty row
    return out, lse


def fused_tile_backward(qc: Tensor, kb: Tensor, vb: Tensor, oc: Tensor, doc: Tensor, lse_c: Tensor,
                        seg: Segment, oks: list[Tensor], scale: float, bk: int,
                        mask_buf: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One batched tile's share of dQ (B, H, nb, bq, D), dK and dV (B, H, nb|1, w·bk, D), from the
    *whole* row's context oc, its gradient doc and lse_c (B, H, nb, bq, 1; +inf on empty rows):
    with the global lse and D = rowsum(dO ∘ O) the op's P and dS are this tile's part of the
    full softmax (Alg. 2), so per-tile results just add up. Scale is applied to all three."""
    B, H, nb, bq, _ = qc.shape
    add = additive_mask(seg, oks, B, H, bq, bk, qc.dtype, mask_buf)
    q, k, v = _shaped(qc, kb, vb, seg, add)
    # o, do (B, H, nb, bq, D) and lse (B, H, nb, bq, 1) in q's layout (a shared band: (B, H, 1, nb·bq, ...))
    o, do, lse = oc.reshape(q.shape[:-1] + oc.shape[-1:]), doc.reshape(q.shape[:-1] + doc.shape[-1:]), \
        lse_c.reshape(q.shape[:-1])
    dq, dk, dv = _call(_op_backward(), (do, q, k, v, o, lse), add, H, dropout_p=0.0, is_causal=False,
                       scale=scale)
    return dq.reshape(B, H, nb, bq, dq.shape[-1]), dk, dv  # dq back to (B, H, nb, bq, D)
