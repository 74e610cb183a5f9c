"""Shared helpers for the tiled-backend tests, handed out by the ``tl`` fixture (the suite runs
with ``--import-mode=importlib``, where test folders are not importable)."""

from types import SimpleNamespace

import pytest
import torch

from attnlab import masks


def rand_qkv(B=2, H=4, Hkv=None, Lq=23, Lk=29, D=8, Dv=None, dtype=torch.float32, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    Hkv = Hkv or H
    q = torch.randn(B, H, Lq, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, Hkv, Lk, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, Hkv, Lk, Dv or D, generator=g, dtype=torch.float64)
    out = [t.to(dtype).requires_grad_(grad) for t in (q, k, v)]
    return tuple(out)


def patterns(Lq: int, Lk: int) -> dict:
    """Every mask kind the tiled backend knows, for sequences of Lq queries and Lk keys."""
    seg_q = [i * 3 // Lq for i in range(Lq)]  # three packed documents
    seg_k = [i * 3 // Lk for i in range(Lk)]
    g = torch.Generator().manual_seed(1)
    layout = torch.rand(-(-Lq // 4), -(-Lk // 4), generator=g) < 0.4
    return {
        "none": None,
        "causal": masks.causal(),
        "causal-br": masks.causal("bottom-right"),
        "window": masks.sliding_window(5, 2),
        "window-causal": masks.sliding_window(6, 0),
        "window-br": masks.sliding_window(3, 1, align="bottom-right"),
        "document": masks.document(seg_q, seg_k),
        "doc&causal": masks.document(seg_q, seg_k) & masks.causal(),
        "padding": masks.padding(q_lengths=[Lq - 3, Lq], k_lengths=[Lk - 5, 2]),
        "prefix_lm": masks.prefix_lm(4),
        "dilated": masks.dilated_sliding_window(3, 1, dilation=2),
        "longformer": masks.longformer(2, [0, 5]),
        "strided": masks.sparse_transformer_strided(4),
        "fixed": masks.sparse_transformer_fixed(4, 1),
        "fixed-bidir": masks.sparse_transformer_fixed(5, 2, causal=False),
        "dilated-br": masks.dilated_sliding_window(2, 1, dilation=3, align="bottom-right"),
        "bigbird": masks.bigbird(4, 3, 1, 1, seed=3),
        "block_sparse": masks.block_sparse(layout, 4),
        "or": masks.sliding_window(2, 0) | masks.prefix_lm(3),
        "not": ~masks.sliding_window(1, 1),
        "custom": lambda b, h, q, kv: (q + kv + h) % 3 != 0,
    }


@pytest.fixture
def tl():
    return SimpleNamespace(rand_qkv=rand_qkv, patterns=patterns)
