"""The kernels a benchmark compares, each prepared for one (case, n, mode).

- ``tiled``: attnlab's tiled backend (the Mask as is).
- ``eager``: attnlab's reference; materialises the (B, H, n, n) scores.
- ``sdpa``: torch.nn.functional.scaled_dot_product_attention directly; causal as is_causal,
  other masks materialised as a dense bool (n, n) tensor (its build time is not timed).
- ``flex``: torch.nn.attention.flex_attention under torch.compile, with a BlockMask built from
  the same mask_mod. Block-mask creation and compilation are reported separately and excluded
  from the timing. Needs a working C++ compiler; backward is not supported on CPU.

Peers whose estimated time or memory exceeds the caps are skipped with a note, never run.
"""

from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

import attnlab
from attnlab.bench.cases import STANDARD, Case, Shape, dense_flops, useful_flops
from attnlab.functional.masks import materialize

PEERS = ("tiled", "sdpa", "flex", "eager")


@dataclass
class Prepared:
    fn: Callable[[], Tensor] | None  # one call; returns the context
    note: str = ""
    setup_s: float = 0.0  # excluded: mask materialisation, block-mask creation


@dataclass(frozen=True)
class Limits:
    max_seconds: float = 60.0  # estimated seconds per call above which a peer is skipped
    max_bytes: float = 6e9  # estimated extra memory above which a peer is skipped
    peak_gflops: float = 100.0  # this machine's measured matmul peak (for time estimates)


def _estimate(peer: str, case: Case, n: int, mode: str, lim: Limits,
              shape: Shape = STANDARD) -> tuple[float, float]:
    """(seconds, bytes): rough upper estimates used only to skip hopeless runs."""
    peak = lim.peak_gflops * 1e9
    bh = shape.b * shape.hq
    if peer in ("eager", "sdpa"):
        secs = dense_flops(n, mode, shape) / (0.4 * peak)
        if peer == "eager":
            return secs, 3.0 * bh * n * n * 4 * (2 if mode == "fwd+bwd" else 1)
        masked = case.make(n) is not None and not case.is_causal
        return secs, (5.0 * n * n if masked else 0.0) + 64.0 * bh * n * 4
    eff = 0.4 if peer == "tiled" else 0.3
    io = bh * n * shape.dh * 4.0  # one (B, Hq, n, Dh) fp32 tensor
    return useful_flops(case, n, mode, shape) / (eff * peak), (1.5 if mode == "fwd" else 6.0) * io + 2e8


@functools.lru_cache(maxsize=1)
def flex_status() -> str:
    """'' when FlexAttention can be compiled here, else why not."""
    if shutil.which("g++") is None and shutil.which("c++") is None and shutil.which("clang++") is None:
        return "no C++ compiler on this machine (torch.compile's CPU backend needs one)"
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the torch build
        return f"flex_attention unavailable: {e}"
    return ""


@functools.lru_cache(maxsize=1)
def _compiled_flex() -> Callable:
    import torch._dynamo
    from torch.nn.attention.flex_attention import flex_attention

    # One specialisation per (case, n): past torch's default limit of 8 recompilations dynamo
    # silently falls back to running flex_attention uncompiled (10x slower).
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 4096)
    if hasattr(torch._dynamo.config, "accumulated_recompile_limit"):
        torch._dynamo.config.accumulated_recompile_limit = 4096
    return torch.compile(flex_attention, dynamic=False)


def prepare(peer: str, case: Case, n: int, mode: str, q: Tensor, k: Tensor, v: Tensor,
            lim: Limits, shape: Shape = STANDARD) -> Prepared:
    if peer == "flex":  # reasons that hold whatever the size come first
        no_bwd = "FlexAttention has no backward on CPU (torch raises)" if mode == "fwd+bwd" else ""
        why = flex_status() or no_bwd
        if why:
            return Prepared(None, f"skipped: {why}")
    secs, mem = _estimate(peer, case, n, mode, lim, shape)
    gqa = shape.hkv != shape.hq  # SDPA and FlexAttention share K/V heads only when asked
    if secs > lim.max_seconds:
        return Prepared(None, f"skipped: estimated {secs:.0f} s per call > cap {lim.max_seconds:.0f} s")
    if mem > lim.max_bytes:
        return Prepared(None, f"skipped: needs ~{mem / 1e9:.0f} GB > cap {lim.max_bytes / 1e9:.0f} GB")
    m = case.make(n)
    if peer == "tiled":
        return Prepared(lambda: attnlab.attention(q, k, v, mask=m, backend="tiled").context)
    if peer == "eager":
        return Prepared(lambda: attnlab.attention(q, k, v, mask=m, backend="eager").context,
                        "materialises (B,H,n,n) scores and weights")
    if peer == "sdpa":
        if m is None or case.is_causal:
            causal = case.is_causal
            return Prepared(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa),
                            "is_causal" if causal else "no mask")
        t = time.perf_counter()
        dense = materialize(m, n, n)  # (1, 1, n, n) bool, True = attend
        setup = time.perf_counter() - t
        return Prepared(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense, enable_gqa=gqa),
                        "dense bool mask materialised", setup)
    if peer == "flex":
        from torch.nn.attention.flex_attention import create_block_mask

        mod = case.flex_mod(n)
        t = time.perf_counter()
        bm = None if mod is None else create_block_mask(mod, None, None, n, n, device="cpu", _compile=True)
        setup = time.perf_counter() - t
        f = _compiled_flex()
        return Prepared(lambda: f(q, k, v, block_mask=bm, enable_gqa=gqa), "torch.compile(flex_attention)",
                        setup)
    raise ValueError(f"peer: expected one of {list(PEERS)}, got {peer!r}")
