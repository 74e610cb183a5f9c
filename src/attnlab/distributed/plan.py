"""Which K/V shards each rank needs, derived by every rank alike without communicating.

The block map of the mask at chunk granularity (one tile = one query chunk x one key chunk,
attnlab.backends.tiled.blockmap) says which chunk pairs hold any allowed (q, kv) pair; a rank
needs another rank's K/V when some pair of their chunks does. Every rank builds the same map
from the same mask and shapes, so senders and receivers agree with no message.

Transfers go straight from the owner: at hop s, rank j sends its own K/V to rank j + s (mod P)
when that rank needs them, and receives from j - s. Each hop moves one shard per rank, as a
ring does (Liu et al. 2023), but no rank relays a shard it does not need, so a skipped pair
costs neither compute nor bytes, and hops nobody needs are skipped altogether: a causal sliding
window narrower than a shard needs hop 1 only, whatever P is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnlab.backends.tiled import block_map
from attnlab.distributed.layout import Layout
from attnlab.functional.masks import Mask


@dataclass(frozen=True)
class RingPlan:
    layout: Layout
    q_chunk: int  # query rows per chunk
    kv_chunk: int  # keys per chunk
    chunk_pairs: Tensor  # (nC, nC) bool: query chunk gi may see some key of chunk gj

    @property
    def world(self) -> int:
        return self.layout.world

    @property
    def needed(self) -> Tensor:
        """(P, P) bool: rank i needs the K/V shard of rank j."""
        P, lay = self.world, self.layout
        out = torch.zeros(P, P, dtype=torch.bool)
        for i in range(P):
            for j in range(P):
                out[i, j] = bool(self.chunk_pairs[list(lay.chunks(i))][:, list(lay.chunks(j))].any())
        return out

    def hops(self) -> list[int]:
        """Hop distances s (rank j -> j + s) some rank needs, ascending; 0 is the local shard."""
        need = self.needed
        P = self.world
        return [s for s in range(P) if any(bool(need[(j + s) % P, j]) for j in range(P))]

    def sends(self, rank: int, hop: int) -> bool:
        """Does ``rank`` send its K/V at ``hop`` (to rank + hop)?"""
        return hop > 0 and bool(self.needed[(rank + hop) % self.world, rank])

    def receives(self, rank: int, hop: int) -> bool:
        """Does ``rank`` use the K/V of rank - hop (received at ``hop``, or its own at hop 0)?"""
        return bool(self.needed[rank, (rank - hop) % self.world])

    def pairs(self, rank: int, src: int) -> list[tuple[int, int, int, int]]:
        """(local query chunk, global query chunk, local key chunk, global key chunk) to compute
        when ``rank`` holds the K/V of ``src``."""
        lay = self.layout
        return [(a, gi, b, gj) for a, gi in enumerate(lay.chunks(rank))
                for b, gj in enumerate(lay.chunks(src)) if bool(self.chunk_pairs[gi, gj])]

    def tiles(self, rank: int) -> int:
        """Chunk pairs a rank computes (its share of the work, for balance reports)."""
        return sum(len(self.pairs(rank, src)) for src in range(self.world))


def ring_plan(mask: Mask | None, layout: Layout, q_shard: int, kv_shard: int, *, batch: int = 1,
              heads: int = 1) -> RingPlan:
    """The plan for shards of ``q_shard`` queries and ``kv_shard`` keys per rank."""
    cpr = layout.chunks_per_rank
    qc, kc = q_shard // cpr, kv_shard // cpr
    n = layout.n_chunks
    if mask is None:
        pairs = torch.ones(n, n, dtype=torch.bool)
    else:
        bm = block_map(mask, qc * n, kc * n, qc, kc, batch=batch, heads=heads)
        pairs = bm.to_dense() > 0  # (nC, nC): one tile per chunk pair
    return RingPlan(layout, qc, kc, pairs)
