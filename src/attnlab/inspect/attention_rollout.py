"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers", §3).

Raw attention of layer l says how much each token mixes the layer's inputs; the residual
connection carries the input through as well. Rollout models both with
``Â_l = 0.5·A_l + 0.5·I`` (rows re-normalised to sum to 1) and multiplies the layers:
``R = Â_L · Â_{L−1} ··· Â_1``. Row i of R is how much output token i draws on each input token.

``A_l`` is the mean over heads by default (the paper); ``fusion="max"`` or ``"min"`` are the
common variants (Chefer et al. 2021 discuss them).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

Fusion = Literal["mean", "max", "min"]


def as_weights(weights: object) -> Tensor:
    """The (L, H, T, T) weights of a tensor or of what ``capture`` returns (its ``.weights``)."""
    w = getattr(weights, "weights", weights)
    if not isinstance(w, Tensor):
        raise TypeError(f"weights: expected a (layers, heads, T, T) tensor or a captured "
                        f"AttentionCache (attnlab.inspect.attention_cache), got {type(weights).__name__}")
    return w


def fuse_heads(weights: Tensor, fusion: Fusion = "mean") -> Tensor:
    """(L, H, T, T) -> (L, T, T)."""
    weights = as_weights(weights)
    if weights.ndim != 4 or weights.shape[-1] != weights.shape[-2]:
        raise ValueError(f"weights: expected (layers, heads, T, T) self-attention, "
                         f"got {tuple(weights.shape)}")
    if fusion == "mean":
        return weights.mean(dim=1)
    if fusion == "max":
        return weights.amax(dim=1)
    if fusion == "min":
        return weights.amin(dim=1)
    raise ValueError(f"fusion: expected 'mean', 'max' or 'min', got {fusion!r}")


def residual_attention(weights: Tensor, fusion: Fusion = "mean", residual: float = 0.5) -> Tensor:
    """``Â_l = (1 − r)·A_l + r·I``, rows re-normalised: (L, T, T) from (L, H, T, T)."""
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual: expected a weight in [0, 1], got {residual}")
    a = fuse_heads(as_weights(weights).double(), fusion)  # (L, T, T); float64: products of many layers
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    a = (1.0 - residual) * a + residual * eye
    return a / a.sum(dim=-1, keepdim=True)


def rollout(weights: Tensor | Any, *, fusion: Fusion = "mean", residual: float = 0.5,
            upto: int | None = None) -> Tensor:
    """Rollout through layers ``0..upto`` (default all): (T, T), rows sum to 1, float64.
    ``weights``: (L, H, T, T), or the AttentionCache ``capture(lm, text)`` returns."""
    a = residual_attention(weights, fusion, residual)  # (L, T, T)
    n = a.shape[0] if upto is None else upto + 1
    if not 1 <= n <= a.shape[0]:
        raise ValueError(f"upto: expected a layer in 0..{a.shape[0] - 1}, got {upto}")
    r = a[0]
    for layer in range(1, n):
        r = a[layer] @ r  # (T, T): layer l reads the mixtures the layers below made
    return r
