"""One batched tile through ATen's fused CPU flash-attention kernel.

The plain-op tile (tiled_kernels._tile_softmax) is ~8 PyTorch ops, each a pass over the score
tile; their passes, not the GEMMs, are what keeps it below SDPA's speed. ATen ships the fused
loop that SDPA uses on a CPU (``aten::_scaled_dot_product_flash_attention_for_cpu``: QKᵀ,
additive mask, online softmax and PV per 2-D block, in cache, and it returns the lse). It
takes arbitrary batch strides, so a tile's query blocks and its key bands (strided views,
overlapping for sliding windows) go in as (B·H, nb, rows, D) without a copy; the block map
still decides which keys each query block reads. Used for the forward only when nothing needs
the plain path: no score_mod or bias, finite k/v, and the op present and checked at import;
the backward stays on recomputed tiles (tiled_backward.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.backends.tiled_plan import Segment

NEG_INF = float("-inf")
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _op():  # the op, or None on a torch without it
    ops = getattr(torch.ops, "aten", None)
    return getattr(ops, "_scaled_dot_product_flash_attention_for_cpu", None) if ops else None


def _self_check() -> bool:
    """Use the op only if it gives the exact masked softmax on strided, masked input (it is a
    private ATen op: its contract is checked here rather than assumed)."""
    op = _op()
    if op is None:
        return False
    try:
        g = torch.Generator().manual_seed(0)
        q = torch.randn(2, 3, 40, 16, generator=g)
        big = torch.randn(2, 3, 120, 16, generator=g)
        k = big[:, :, ::2]  # strided rows
        allowed = torch.rand(1, 3, 40, 60, generator=g) > 0.4
        add = torch.zeros(allowed.shape).masked_fill_(~allowed, NEG_INF)
        out, lse = op(q, k, k, attn_mask=add, scale=0.3)
        s = (q @ k.transpose(-1, -2) * 0.3).masked_fill(~allowed, NEG_INF)
        ref_lse = torch.logsumexp(s, -1)
        ref = torch.softmax(s, -1) @ k
        return bool(torch.allclose(out, ref, atol=1e-5)) and bool(torch.allclose(lse, ref_lse, atol=1e-5))
    except (RuntimeError, TypeError):
        return False


AVAILABLE = _self_check()


def fused_ok(q: Tensor, v: Tensor, modifies: bool, sanitize: bool) -> bool:
    """The op's own limits (one head size for q, k and v; float dtypes), and nothing that needs
    the plain path (a score_mod or bias between QKᵀ and softmax; non-finite k/v to clean)."""
    return (AVAILABLE and q.dtype in _DTYPES and q.shape[-1] == v.shape[-1] and q.device.type == "cpu"
            and not modifies and not sanitize)


def _rows4(x: Tensor) -> Tensor | None:
    """(B, H, nb, L, D) -> (B·H, nb, L, D) as a view, or None where B and H do not merge
    (residue-class views, whose H axis is interleaved with the rows)."""
    try:
        return x.view(x.shape[0] * x.shape[1], *x.shape[2:])
    except RuntimeError:
        return None


def additive_mask(seg: Segment, oks: list[Tensor], batch: int, heads: int, bq: int, bk: int,
                  dtype: torch.dtype, buf: Tensor | None = None) -> Tensor | None:
    """The band's mask as the additive float mask the op takes, (B·H|1, nb, bq, w·bk), or None
    for a band of full tiles. The op broadcasts a leading 1 only: a mask that depends on the
    batch or the head is spread over all B·H."""
    if not seg.masked:
        return None
    nb, w = seg.k_blocks.shape
    mb = max(ok.shape[0] for ok in oks)
    mh = max(ok.shape[1] for ok in oks)
    size = mb * mh * nb * bq * w * bk
    if buf is not None and buf.numel() >= size and buf.dtype == dtype:  # reused: no page faults
        add = buf[:size].view(mb, mh, nb, bq, w * bk).zero_()
    else:
        add = torch.zeros(mb, mh, nb, bq, w * bk, dtype=dtype)
    for (p0, p1), ok in zip(seg.masked, oks, strict=True):
        add[..., p0 * bk: p1 * bk].masked_fill_(~ok, NEG_INF)
    if mb * mh == 1:
        return add[0]
    return add.expand(batch, heads, -1, -1, -1).reshape(batch * heads, nb, bq, w * bk)


def fused_tile(qc: Tensor, kb: Tensor, vb: Tensor, seg: Segment, oks: list[Tensor], scale: float,
               bk: int, mask_buf: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Context (B, H, nb, bq, Dv) and lse (B, H, nb, bq, 1) of one batched tile; rows that see
    no key get 0 and -inf. ``mask_buf``: scratch memory for the additive mask."""
    B, H, nb, bq, _ = qc.shape
    add = additive_mask(seg, oks, B, H, bq, bk, qc.dtype, mask_buf)
    if seg.shared and add is None:  # every query block reads the same keys: one tall problem
        q, k, v = qc.reshape(B, H, 1, nb * bq, qc.shape[-1]), kb[:, :, :1], vb[:, :, :1]
    else:
        q, k, v = qc, kb, vb
    op = _op()
    q4, k4, v4 = _rows4(q), _rows4(k), _rows4(v)
    if q4 is not None and k4 is not None and v4 is not None:
        out, lse = op(q4, k4, v4, attn_mask=add, scale=scale)
    else:  # one call per batch element, heads as the op's batch axis
        m = (lambda b: add) if add is None or add.shape[0] == 1 else (lambda b: add[b * H: (b + 1) * H])
        res = [op(q[b], k[b], v[b], attn_mask=m(b), scale=scale) for b in range(B)]
        out, lse = torch.stack([r[0] for r in res]), torch.stack([r[1] for r in res])
    out = out.reshape(B, H, nb, bq, out.shape[-1])
    lse = lse.reshape(B, H, nb, bq, 1)
    covered = sum(p1 - p0 for p0, p1 in seg.masked)
    if covered == seg.k_blocks.shape[1]:  # every tile partial: a row may see nothing
        seen = torch.stack([ok.any(-1) for ok in oks]).any(0).unsqueeze(-1)  # (B|1, H|1, nb, bq, 1)
        lse = lse.masked_fill(~seen, NEG_INF)  # the op reports 0 for an empty row
    return out, lse
