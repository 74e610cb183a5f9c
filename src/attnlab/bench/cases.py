"""Benchmark cases: a mask per sequence length, and the useful work it implies.

Useful FLOPs count only the allowed (q, kv) pairs: forward = 4·Dh·nnz (QKᵀ and PV, 2 FLOPs per
multiply-add), forward+backward = 3.5x that (FlashAttention's convention: the backward's dQ,
dK, dV, dP products are 2.5x the forward's). A kernel that computes masked tiles does not get
credit for them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from attnlab import masks
from attnlab.backends.tiled import count_allowed
from attnlab.functional.masks import Mask
from attnlab.functional.masks.block_layout import BlockLayout

BWD_FACTOR = 3.5


@dataclass(frozen=True)
class Shape:
    """The tensors every peer sees: q (b, hq, n, dh), k and v (b, hkv, n, dh), fp32."""

    name: str
    b: int
    hq: int
    hkv: int  # hq // hkv query heads share one K/V head (GQA); hkv == hq: plain multi-head
    dh: int
    title: str


SHAPES: dict[str, Shape] = {s.name: s for s in [
    Shape("standard", 1, 8, 8, 64, "batch 1, 8 heads, head dim 64"),
    # Gemma 3 270M's attention (config.json: num_attention_heads 4, num_key_value_heads 1,
    # head_dim 256); its local layers see a 512-token sliding window.
    Shape("gemma3", 1, 4, 1, 256, "Gemma 3 270M: batch 1, 4 query heads sharing 1 K/V head, head dim 256"),
]}
STANDARD = SHAPES["standard"]


def _block_sparse_layout(n: int, block: int = 128, density: float = 0.1, seed: int = 0) -> torch.Tensor:
    """Causal block-sparse layout: the diagonal block, the first block (a global "sink") and a
    seeded ~10% of the blocks below the diagonal."""
    nb = -(-n // block)
    g = torch.Generator().manual_seed(seed)
    lay = torch.rand(nb, nb, generator=g) < density
    lay |= torch.eye(nb, dtype=torch.bool)
    lay[:, 0] = True
    return lay.tril()


def _documents(n: int, seed: int = 0) -> torch.Tensor:
    """Segment ids of packed documents with seeded lengths between 256 and 2048 tokens."""
    g = torch.Generator().manual_seed(seed)
    ids, pos, d = torch.empty(n, dtype=torch.long), 0, 0
    while pos < n:
        length = int(torch.randint(256, 2049, (1,), generator=g))
        ids[pos: pos + length] = d
        pos, d = pos + length, d + 1
    return ids


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    make: Callable[[int], Mask | None]
    flex: Callable[[int], Callable | None] | None = None  # FlexAttention mask_mod (default: the Mask)
    is_causal: bool = False  # SDPA can take it as is_causal=True (no materialised mask)

    def flex_mod(self, n: int) -> Callable | None:
        return self.flex(n) if self.flex is not None else self.make(n)


def _bigbird_layout(n: int) -> torch.Tensor:
    """The (n/64, n/64) block layout of the BigBird case, for FlexAttention's peer mask."""
    pattern = masks.bigbird(64, 3, 2, 3, seed=0).pattern
    assert isinstance(pattern, BlockLayout)
    return pattern.layout(n, n)


def _int_layout_mod(layout: torch.Tensor, block: int) -> Callable:
    lay = layout.to(torch.int32)  # FlexAttention's C++ codegen fails on bool tensor loads

    def mod(b, h, q, kv):
        return lay[q // block, kv // block] > 0

    return mod


def _window(w: int) -> Case:
    return Case(f"sliding_window_{w}", f"sliding window W={w} (causal, W+1 keys)",
                lambda n: masks.sliding_window(w, 0))


CASES: dict[str, Case] = {c.name: c for c in [
    Case("dense", "dense (no mask)", lambda n: None),
    Case("causal", "causal", lambda n: masks.causal(), is_causal=True),
    _window(128),
    _window(256),
    _window(512),
    Case("block_sparse", "block-sparse (128-blocks: diagonal, sink, 10% random; causal)",
         lambda n: masks.block_sparse(_block_sparse_layout(n), 128),
         flex=lambda n: _int_layout_mod(_block_sparse_layout(n), 128)),
    Case("document", "packed documents 256-2048 tokens, causal",
         lambda n: masks.document(_documents(n)) & masks.causal()),
    Case("longformer", "Longformer window 128 + 16 global tokens",
         lambda n: masks.longformer(128, list(range(16)))),
    Case("bigbird", "BigBird 64-blocks: 3 window, 2 global, 3 random",
         lambda n: masks.bigbird(64, 3, 2, 3, seed=0),
         flex=lambda n: _int_layout_mod(_bigbird_layout(n), 64)),
    Case("strided", "Sparse Transformer strided, l=128", lambda n: masks.sparse_transformer_strided(128)),
    Case("fixed", "Sparse Transformer fixed, l=128, c=16", lambda n: masks.sparse_transformer_fixed(128, 16)),
    Case("dilated", "dilated window 64 keys x4 (causal)", lambda n: masks.dilated_sliding_window(64, 0, 4)),
]}


def nnz(case: Case, n: int) -> int:
    """Allowed (q, kv) pairs for one (batch, head)."""
    m = case.make(n)
    return n * n if m is None else count_allowed(m, n, n)


def useful_flops(case: Case, n: int, mode: str, shape: Shape = STANDARD) -> float:
    """Per query head: K/V heads shared by several query heads are still multiplied once each."""
    f = 4.0 * shape.dh * nnz(case, n) * shape.b * shape.hq
    return f * (BWD_FACTOR if mode == "fwd+bwd" else 1.0)


def dense_flops(n: int, mode: str, shape: Shape = STANDARD) -> float:
    return 4.0 * shape.dh * n * n * shape.b * shape.hq * (BWD_FACTOR if mode == "fwd+bwd" else 1.0)


def parse_n(text: str) -> int:
    """'16k' -> 16384, '1m' -> 1048576, '4096' -> 4096."""
    t = text.strip().lower()
    mult = {"k": 1024, "m": 1024 * 1024}.get(t[-1:], 1)
    val = float(t[:-1] if mult > 1 else t) * mult
    if val < 1 or not math.isfinite(val) or val != int(val):
        raise ValueError(f"n: expected a positive length like 4096, 16k or 1m, got {text!r}")
    return int(val)
