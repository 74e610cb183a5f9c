"""Attention flow (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers", §4).

The model is a layered graph: node (l, i) is token i after layer l (l = 0: the inputs). An edge
from (l, i) down to (l − 1, j) has capacity ``Â_l[i, j]``, the residual-adjusted attention of
rollout (0.5·A + 0.5·I, rows re-normalised). The flow of output token i to input token j is the
maximum flow from (L, i) to (0, j): unlike rollout (a product of paths), it is limited by the
narrowest edges on the way. Rows are re-normalised to sum to 1, as in the authors' code.

Max-flow runs with networkx's Edmonds–Karp (networkx comes with torch). Capacities are scaled
to integers (1e-9 resolution) so the augmenting-path arithmetic is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from attnlab.arguments import expect_int
from attnlab.inspect.attention_rollout import Fusion, residual_attention

SCALE = 10**9  # capacity resolution


def _graph(a: Tensor):
    """The layered DiGraph for residual attention ``a`` (L, T, T)."""
    import networkx as nx  # lazy: only flow needs it

    L, T, _ = a.shape
    cap = torch.round(a * SCALE).to(torch.int64)  # (L, T, T)
    g = nx.DiGraph()
    g.add_nodes_from((layer, i) for layer in range(L + 1) for i in range(T))
    for layer in range(1, L + 1):
        rows, cols = torch.nonzero(cap[layer - 1], as_tuple=True)
        g.add_edges_from(((layer, int(i)), (layer - 1, int(j)), {"capacity": int(cap[layer - 1, i, j])})
                         for i, j in zip(rows.tolist(), cols.tolist(), strict=True))
    return g


def attention_flow(weights: Tensor, *, queries: Sequence[int] | None = None, fusion: Fusion = "mean",
                   residual: float = 0.5, normalize: bool = True) -> Tensor:
    """Flow from each output token in ``queries`` (default all) to every input token.

    ``weights``: (L, H, T, T). Returns (len(queries), T) float64; rows sum to 1 when
    ``normalize`` (else raw flow values, each at most 1).
    """
    from networkx.algorithms.flow import edmonds_karp, maximum_flow_value

    a = residual_attention(weights, fusion, residual)  # (L, T, T)
    L, T, _ = a.shape
    qs = list(range(T)) if queries is None else list(queries)
    for q in qs:
        expect_int("queries", q, 0, T - 1, expected=f"positions in 0..{T - 1}")
    g = _graph(a)
    out = torch.zeros(len(qs), T, dtype=torch.float64)
    for r, q in enumerate(qs):
        for j in range(T):
            value = maximum_flow_value(g, (L, q), (0, j), flow_func=edmonds_karp)
            out[r, j] = value / SCALE
    if normalize:
        out = out / out.sum(dim=-1, keepdim=True).clamp_min(1e-300)
    return out
