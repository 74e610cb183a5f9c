"""The GEMMs of a batched tile: key/value bands as views, and Q·Kᵀ, P·V, aᵀ·g over them.

A tile covers ``nb`` query blocks of ``bq`` rows, each against its own band of key blocks
(``w`` blocks of ``bk`` keys), for every batch element and head at once: scores are
(B, H, nb, bq, w·bk).
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.backends.tiled.plan import Segment
from attnlab.backends.tiled.tuning import PER_HEAD_MAX, PER_HEAD_MIN_TILE


def band(x: Tensor, seg: Segment, bk: int, buf: Tensor | None = None) -> Tensor:
    """Keys or values of a segment: (B, H, N·bk, D) -> (B, H, nb, w·bk, D).

    Arithmetic bands (query block r reads blocks start + r·step ... + w - 1, as in a sliding
    window) are strided views of x: no gather, no Python loop over blocks."""
    B, H, _, D = x.shape
    nb, w = seg.k_blocks.shape
    if seg.k_start is not None:
        s = seg.k_start * bk
        if nb == 1:
            return x[:, :, s: s + w * bk].unsqueeze(2)  # (B, H, 1, w·bk, D)
        st = x.stride()  # rows may be strided (residue-class views): st[2] >= D
        return x.as_strided((B, H, nb, w * bk, D), (st[0], st[1], seg.k_step * bk * st[2], st[2], st[3]),
                            x.storage_offset() + s * st[2])
    xb = x.view(B, H, -1, bk, D)  # (B, H, nKB, bk, D)
    # index_select copies whole blocks (memcpy; advanced indexing is ~10x slower here), into a
    # reused buffer when given (a fresh multi-MB tensor costs its page faults every time).
    out = None if buf is None else buf[: B * H * nb * w * bk * D].view(B, H, nb * w, bk, D)
    # (B, H, nKB, bk, D) -> the band's blocks (B, H, nb·w, bk, D) -> (B, H, nb, w·bk, D)
    return torch.index_select(xb, 2, seg.k_blocks.flatten(), out=out).view(B, H, nb, w * bk, D)


def scatter_band(acc: Tensor, grad: Tensor, seg: Segment, bk: int, base: int = 0) -> None:
    """acc (B, H, N·bk, D) += a band gradient (B, H, nb, w·bk, D), overlapping bands summed in a
    fixed order (no result depends on thread scheduling). ``base``: acc starts at key block
    ``base`` (a buffer covering only the keys a group of tiles reads).

    For a shared segment, grad is (B, H, 1, w·bk, D), already summed over the query blocks."""
    B, H, _, D = acc.shape
    nb, w = seg.k_blocks.shape
    if seg.shared:
        s = (seg.k_start - base) * bk  # type: ignore[operator]
        acc[:, :, s: s + w * bk] += grad[:, :, 0]
        return
    blocks = acc.view(B, H, -1, bk, D)  # (B, H, nKB, bk, D)
    g = grad.view(B, H, nb, w, bk, D)  # (B, H, nb, w·bk, D) -> (B, H, nb, w, bk, D)
    if seg.k_start is not None:  # evenly spaced bands: w strided adds instead of nb·w scattered ones
        s, st = seg.k_start - base, max(seg.k_step, 1)
        for p in range(w):
            blocks[:, :, s + p: s + p + (nb - 1) * st + 1: st] += g[:, :, :, p]
        return
    idx = seg.k_blocks.flatten() if base == 0 else seg.k_blocks.flatten() - base  # (nb·w,)
    # deterministic on a CPU (torch.use_deterministic_algorithms flags index_add_ on CUDA only)
    blocks.index_add_(2, idx, g.reshape(B, H, nb * w, bk, D))  # (B, H, nb·w, bk, D) into nKB blocks


def head_loop(batch: int, heads: int, tile: int) -> list[tuple[int | None, int | None]]:
    """(b, h) pairs to run a tile of ``tile`` score elements per head on one at a time, or
    [(None, None)] to run all heads at once. Big tiles go head by head so that one head's
    scores stay in cache between the ops; small ones batch the heads to save op overhead."""
    if batch * heads <= PER_HEAD_MAX and tile * batch * heads >= PER_HEAD_MIN_TILE:
        return [(i, j) for i in range(batch) for j in range(heads)]
    return [(None, None)]


def _bmm(a: Tensor, b: Tensor, out: Tensor | None = None, alpha: float = 1.0, beta: float = 0.0) -> Tensor:
    """out = beta·out + alpha·a @ b over (B, H, nb): (B, H, nb, m, k) x (B, H, nb, k, n) -> (B, H, nb, m, n).

    torch.matmul on 5-D tensors flattens (B, H, nb) into one batch axis, which copies a
    strided key band (its nb axis overlaps). Per (b, h), the band is a plain 3-D strided
    tensor that torch.bmm (MKL) reads in place, so a short loop over heads is faster.
    ``alpha`` folds the softmax scale into the GEMM (no scaled copy of q)."""
    B, H, nb, m, _ = a.shape
    if out is None:
        out = a.new_empty(B, H, nb, m, b.shape[-1])
    a3, b3, o3 = _merge3(a), _merge3(b), _merge3(out)
    if a3 is not None and b3 is not None and o3 is not None:  # one batched GEMM, no copies
        o3.baddbmm_(a3, b3, beta=beta, alpha=alpha)
        return out
    if B * H <= PER_HEAD_MAX:
        for i in range(B):
            for j in range(H):
                out[i, j].baddbmm_(a[i, j], b[i, j], beta=beta, alpha=alpha)  # beta=0: out not read
        return out
    res = torch.matmul(a, b)
    res = res if alpha == 1.0 else res.mul_(alpha)
    return out.copy_(res) if beta == 0.0 else out.add_(res)


def _merge3(x: Tensor) -> Tensor | None:
    """(B, H, nb, m, n) as a (B·H·nb, m, n) view, or None when its batch axes do not merge
    (an overlapping key band, a slice of the nb axis)."""
    try:
        return x.view(-1, x.shape[-2], x.shape[-1])  # (B·H·nb, m, n)
    except RuntimeError:
        return None


def _one(x: Tensor) -> Tensor:  # (B, H, nb, m, n) -> (B, H, 1, nb·m, n): a shared tile as one GEMM
    return x.view(x.shape[0], x.shape[1], 1, -1, x.shape[-1])


def qk(qc: Tensor, kb: Tensor, seg: Segment, out: Tensor | None = None, alpha: float = 1.0) -> Tensor:
    """Scores of a tile: alpha · qc (B, H, nb, bq, D) x kb (B, H, nb, w·bk, D)ᵀ -> (B, H, nb, bq, w·bk).
    A shared segment is one GEMM with nb·bq rows per head (bigger, faster matmuls)."""
    B, H, nb, bq, _ = qc.shape
    if seg.shared:
        o = None if out is None else _one(out)
        # (B, H, 1, nb·bq, D) x (B, H, 1, D, w·bk) -> (B, H, nb, bq, w·bk)
        return _bmm(_one(qc), kb[:, :, :1].transpose(-1, -2), o, alpha).view(B, H, nb, bq, -1)
    return _bmm(qc, kb.transpose(-1, -2), out, alpha)  # kbᵀ: (B, H, nb, D, w·bk)


def pv(p: Tensor, vb: Tensor, seg: Segment, out: Tensor | None = None, beta: float = 0.0) -> Tensor:
    """p (B, H, nb, bq, w·bk) x vb (B, H, nb, w·bk, Dv) -> (B, H, nb, bq, Dv) (+ beta · out)."""
    B, H, nb, bq, _ = p.shape
    if seg.shared:
        o = None if out is None else _one(out)
        # (B, H, 1, nb·bq, w·bk) x (B, H, 1, w·bk, Dv) -> (B, H, nb, bq, Dv)
        return _bmm(_one(p), vb[:, :, :1], o, 1.0, beta).view(B, H, nb, bq, -1)
    return _bmm(p, vb, out, 1.0, beta)


def tn(a: Tensor, g: Tensor, seg: Segment, alpha: float = 1.0) -> Tensor:
    """alpha · aᵀ·g per tile: a (B, H, nb, bq, w·bk), g (B, H, nb, bq, D) -> (B, H, nb|1, w·bk, D)
    (the dK and dV products of FlashAttention's backward, Alg. 2 lines 16 and 22)."""
    if seg.shared:
        return _bmm(_one(a).transpose(-1, -2), _one(g), None, alpha)  # (., 1, w·bk, nb·bq) x (., 1, nb·bq, D)
    return _bmm(a.transpose(-1, -2), g, None, alpha)  # (B, H, nb, w·bk, bq) x (B, H, nb, bq, D)
