"""Sparse attention patterns as :class:`~attnlab.functional.masks.Mask` builders.

Each builder returns a Mask whose ``kind`` and ``params`` describe the pattern, so that the
tiled backend derives its block map analytically (attnlab.backends.blockmap) instead of
evaluating every (q, kv) pair. All of them are plain mask_mods too: ``materialize`` works.

- :func:`dilated_sliding_window` - Longformer's dilated window (Beltagy et al. 2020, §3.1).
- :func:`longformer` - sliding window + symmetric global tokens (Beltagy et al. 2020, §3.1).
- :func:`sparse_transformer_strided`, :func:`sparse_transformer_fixed` - the two factorised
  patterns of Child et al. 2019 (§4.2), merged into one causal mask.
- :func:`bigbird` - window + global + seeded random blocks (Zaheer et al. 2020, §2, ITC).
- :func:`block_sparse` - any block layout (True = the block may attend).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from attnlab.functional.checks import expect_nonneg_int, expect_positive_int
from attnlab.functional.masks import Align, Mask, _check_align, _offset


def dilated_sliding_window(left: int, right: int = 0, dilation: int = 1,
                           align: Align = "top-left") -> Mask:
    """Query i sees keys j = i - t·dilation for t in [-right, left] (Longformer's dilated window:
    the receptive field grows by ``dilation`` with no extra keys). ``dilation=1`` is
    :func:`~attnlab.functional.masks.sliding_window`."""
    expect_nonneg_int("left", left)
    expect_nonneg_int("right", right)
    expect_positive_int("dilation", dilation)
    _check_align(align)

    def fn(b, h, q, kv, lq, lk):
        d = q + _offset(align, lq, lk) - kv  # how far the key lies in the past
        return (d >= -right * dilation) & (d <= left * dilation) & (d % dilation == 0)

    return Mask(fn, f"dilated[-{left},+{right}]x{dilation}", "dilated_sliding_window",
                {"left": left, "right": right, "dilation": dilation, "align": align,
                 "needs_lengths": align == "bottom-right"})


def _token_table(name: str, tokens: Sequence[int] | Tensor, seq_len: int | None) -> Tensor:
    t = torch.as_tensor(tokens if not isinstance(tokens, Tensor) else tokens.tolist(), dtype=torch.long)
    if t.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D list of token indices, got shape {tuple(t.shape)}")
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"{name}: expected indices >= 0, got {t.tolist()}")
    if seq_len is not None and t.numel() and int(t.max()) >= seq_len:
        raise ValueError(f"{name}: index {int(t.max())} out of range for seq_len={seq_len}")
    table = torch.zeros(int(t.max()) + 1 if t.numel() else 0, dtype=torch.bool)
    table[t] = True
    return table


def _lookup(table: Tensor, idx: Tensor) -> Tensor:
    """table[idx] with indices past the table giving False (vectorised membership test)."""
    if table.numel() == 0:
        return torch.zeros_like(idx, dtype=torch.bool)
    inside = idx < table.numel()
    return table.to(idx.device)[idx.clamp(max=table.numel() - 1)] & inside


def _check_range(name: str, table: Tensor, lq: int, lk: int) -> None:
    # Lengths are known here (-1 when called as a bare mask_mod): indices must exist.
    if lq >= 0 and table.numel() > min(lq, lk):
        raise ValueError(f"{name}: index {table.numel() - 1} out of range for q_len={lq}, kv_len={lk}")


def longformer(window: int, global_tokens: Sequence[int] | Tensor = (), *,
               seq_len: int | None = None) -> Mask:
    """Sliding window of ``window`` keys on each side, plus global tokens that see and are seen by
    every position (Beltagy et al. 2020, §3.1: "symmetric" global attention).

    Indices in ``global_tokens`` are checked against ``seq_len`` when given, and against the
    real lengths whenever the mask is evaluated. Combine with ``causal()`` for decoders.
    """
    expect_nonneg_int("window", window)
    table = _token_table("global_tokens", global_tokens, seq_len)

    def fn(b, h, q, kv, lq, lk):
        _check_range("global_tokens", table, lq, lk)
        return ((q - kv).abs() <= window) | _lookup(table, q) | _lookup(table, kv)

    return Mask(fn, f"longformer[{window},g={int(table.sum())}]", "longformer",
                {"window": window, "global": table})


def sparse_transformer_strided(stride: int) -> Mask:
    """Child et al. 2019, §4.2 "strided": A(1)_i = {max(0, i - l), ..., i} and
    A(2)_i = {j : (i - j) mod l = 0}; the union, causal (j <= i). Stride l ~ sqrt(n)."""
    expect_positive_int("stride", stride)

    def fn(b, h, q, kv, lq, lk):
        d = q - kv
        return (d >= 0) & ((d <= stride) | (d % stride == 0))

    return Mask(fn, f"strided[{stride}]", "sparse_strided", {"stride": stride})


def sparse_transformer_fixed(stride: int, summary: int = 1, *, causal: bool = True) -> Mask:
    """Child et al. 2019, §4.2 "fixed": A(1)_i = {j : floor(j/l) = floor(i/l)} (same block) and
    A(2)_i = {j : j mod l in {l - c, ..., l - 1}} (the last c "summary" keys of every block);
    their union, causal unless ``causal=False``."""
    expect_positive_int("stride", stride)
    expect_positive_int("summary", summary)
    if summary > stride:
        raise ValueError(f"summary: expected at most stride={stride}, got {summary}")

    def fn(b, h, q, kv, lq, lk):
        ok = (q // stride == kv // stride) | (kv % stride >= stride - summary)
        return ok & (kv <= q) if causal else ok

    return Mask(fn, f"fixed[{stride},c={summary}]", "sparse_fixed",
                {"stride": stride, "summary": summary, "causal": causal})


def _random_layout(n_q: int, n_k: int, per_row: int, seed: int, allowed: Tensor) -> Tensor:
    """Seeded random key blocks per query block, drawn from the blocks not already allowed."""
    g = torch.Generator().manual_seed(seed)
    layout = torch.zeros(n_q, n_k, dtype=torch.bool)
    if per_row == 0:
        return layout
    score = torch.rand(n_q, n_k, generator=g).masked_fill(allowed, 2.0)  # taken blocks sort last
    k = min(per_row, n_k)
    pick = score.topk(k, dim=1, largest=False).indices  # (n_q, k)
    layout.scatter_(1, pick, True)
    return layout & ~allowed


def bigbird(block_size: int, num_window_blocks: int = 3, num_global_blocks: int = 2,
            num_random_blocks: int = 3, seed: int = 0) -> Mask:
    """BigBird ITC (Zaheer et al. 2020, §2 and App. D): blocks of ``block_size`` tokens; each
    query block sees its ``num_window_blocks`` neighbouring blocks (centred), the first
    ``num_global_blocks`` blocks (which also see everything), and ``num_random_blocks`` random
    blocks drawn with ``seed`` (the same for every batch element and head)."""
    expect_positive_int("block_size", block_size)
    expect_positive_int("num_window_blocks", num_window_blocks)
    expect_nonneg_int("num_global_blocks", num_global_blocks)
    expect_nonneg_int("num_random_blocks", num_random_blocks)
    if num_window_blocks % 2 == 0:
        raise ValueError(
            f"num_window_blocks: expected an odd number (centred window), got {num_window_blocks}")
    cache: dict[tuple[int, int], Tensor] = {}

    def layout(lq: int, lk: int) -> Tensor:
        nq, nk = -(-lq // block_size), -(-lk // block_size)
        if (nq, nk) not in cache:
            if num_global_blocks > min(nq, nk):
                raise ValueError(f"num_global_blocks: {num_global_blocks} global blocks do not fit "
                                 f"in {min(nq, nk)} blocks of {block_size} tokens")
            bi, bj = torch.arange(nq).view(-1, 1), torch.arange(nk).view(1, -1)
            fixed = ((bi - bj).abs() <= num_window_blocks // 2) | (bi < num_global_blocks) \
                | (bj < num_global_blocks)
            cache[(nq, nk)] = fixed | _random_layout(nq, nk, num_random_blocks, seed, fixed)
        return cache[(nq, nk)]

    def fn(b, h, q, kv, lq, lk):
        lay = layout(lq, lk).to(q.device)
        return lay[q // block_size, kv // block_size]

    return Mask(fn, f"bigbird[{block_size}]", "bigbird",
                {"block_size": block_size, "layout": layout, "needs_lengths": True,
                 "num_window_blocks": num_window_blocks, "num_global_blocks": num_global_blocks})


def block_sparse(layout: Tensor | Sequence[Sequence[bool]], block_size: int) -> Mask:
    """Block-sparse attention: query i may attend key j when ``layout[i // bs, j // bs]``.

    ``layout``: bool (n_q_blocks, n_kv_blocks), True = the block may attend; it must cover the
    sequence lengths it is used with.
    """
    expect_positive_int("block_size", block_size)
    lay = layout if isinstance(layout, Tensor) else torch.as_tensor(layout)
    if lay.dtype != torch.bool or lay.ndim != 2:
        raise ValueError(f"layout: expected a 2-D bool tensor, got {lay.dtype} of shape {tuple(lay.shape)}")

    def fn(b, h, q, kv, lq, lk):
        if lq >= 0 and (lay.shape[0] * block_size < lq or lay.shape[1] * block_size < lk):
            raise ValueError(f"layout: {tuple(lay.shape)} blocks of {block_size} do not cover "
                             f"q_len={lq}, kv_len={lk}")
        return lay.to(q.device)[q // block_size, kv // block_size]

    return Mask(fn, f"block_sparse[{block_size}]", "block_sparse",
                {"layout": lay, "block_size": block_size})
