"""Positional encodings: sinusoidal (Vaswani et al. 2017, §3.5) and rotary (Su et al. 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.functional.checks import expect_positive_int, expect_tensor


def sinusoidal(length: int, dim: int, *, base: float = 10000.0,
               dtype: torch.dtype = torch.float32) -> Tensor:
    """PE(pos, 2i) = sin(pos / base^(2i/d)), PE(pos, 2i+1) = cos(...).  -> (length, dim)."""
    expect_positive_int("length", length)
    expect_positive_int("dim", dim)
    pos = torch.arange(length, dtype=torch.float64).unsqueeze(1)  # (L, 1)
    inv = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (ceil(d/2),)
    angles = pos * inv  # (L, ceil(d/2))
    pe = torch.zeros(length, dim, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return pe.to(dtype)


def rotary_cos_sin(length: int, dim: int, *, base: float = 10000.0, offset: int = 0,
                   dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """cos and sin tables (length, dim) for RoPE in the "rotate half" layout (GPT-NeoX, HF).

    Frequencies θ_i = base^(-2i/d) (Su et al. 2021, eq. 15); ``offset`` starts the positions
    later, for decoding with a KV cache. Computed in float64 on the CPU whatever ``device``
    (the same tables on every device), then moved there.
    """
    expect_positive_int("length", length)
    expect_positive_int("dim", dim)
    if dim % 2:
        raise ValueError(f"dim: expected an even head dim for rotary embeddings, got {dim}")
    cpu = torch.device("cpu")
    inv = base ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=cpu) / dim)  # (d/2,)
    pos = torch.arange(offset, offset + length, dtype=torch.float64, device=cpu)  # (L,)
    freqs = torch.outer(pos, inv)  # (L, d/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (L, d)
    return emb.cos().to(device, dtype), emb.sin().to(device, dtype)


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x_i, x_{i+d/2}) by position-dependent angles.  x (..., L, d), cos/sin (L, d)
    or, for per-sequence positions (left padding), (B, 1, L, d) broadcasting over heads.

    After rotation, <rope(q, m), rope(k, n)> depends on m - n only: relative positions.
    """
    expect_tensor("x", x, min_ndim=2, floating=True)
    if cos.shape != sin.shape or cos.shape[-2:] != x.shape[-2:]:
        raise ValueError(
            f"cos/sin: expected shape (..., L, d) with (L, d) = {tuple(x.shape[-2:])} to match x, "
            f"got {tuple(cos.shape)} and {tuple(sin.shape)}"
        )
    return x * cos.to(x.dtype) + _rotate_half(x) * sin.to(x.dtype)
