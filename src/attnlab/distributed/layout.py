"""How a sequence is split over ranks: which global positions each rank's shard holds.

- ``contiguous``: rank r holds positions [r·S/P, (r+1)·S/P). Simple, but under a causal mask
  the last rank sees every key and the first only its own: work grows with r.
- ``zigzag``: the sequence is cut into 2P chunks and rank r holds chunks r and 2P-1-r (an early
  and a late one), so every rank gets about the same causal work (the balance used by
  zhuzilin/ring-flash-attention and Megatron's context parallelism).

A shard is the concatenation of its rank's chunks, in the order above. Every chunk is a
contiguous run of positions: the kernels work chunk by chunk with global offsets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

LayoutName = Literal["contiguous", "zigzag"]
LAYOUTS: tuple[LayoutName, ...] = ("contiguous", "zigzag")


@dataclass(frozen=True)
class Layout:
    name: LayoutName
    world: int

    @property
    def chunks_per_rank(self) -> int:
        return 1 if self.name == "contiguous" else 2

    @property
    def n_chunks(self) -> int:
        return self.world * self.chunks_per_rank

    def chunks(self, rank: int) -> tuple[int, ...]:
        """Global chunk indices a rank holds, in shard order."""
        if self.name == "contiguous":
            return (rank,)
        return (rank, 2 * self.world - 1 - rank)

    def owner(self, chunk: int) -> int:
        if self.name == "contiguous":
            return chunk
        return chunk if chunk < self.world else 2 * self.world - 1 - chunk

    def positions(self, rank: int, shard_len: int) -> Tensor:
        """(shard_len,) global positions of a rank's shard rows."""
        c = shard_len // self.chunks_per_rank
        return torch.cat([torch.arange(g * c, (g + 1) * c) for g in self.chunks(rank)])


def make_layout(name: str, world: int) -> Layout:
    if name not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {name!r}")
    return Layout(name, world)  # type: ignore[arg-type]  # checked just above


def check_divisible(name: str, length: int, layout: Layout) -> int:
    """The shard length for a global ``length``; a clear error when it does not split evenly."""
    if length % layout.n_chunks:
        raise ValueError(
            f"{name}: a length of {length} does not split into {layout.n_chunks} equal chunks "
            f"({layout.name} layout over {layout.world} ranks); pad the sequence to a multiple of "
            f"{layout.n_chunks} (masks.padding keeps the padding out of the attention)")
    return length // layout.world


def shard(x: Tensor, rank: int, world: int, *, layout: str = "contiguous", dim: int = -2) -> Tensor:
    """This rank's shard of a full tensor along the sequence axis ``dim`` (default: the L of
    (..., L, D))."""
    lay = make_layout(layout, world)
    n = check_divisible("x", x.shape[dim], lay)
    idx = lay.positions(rank, n).to(x.device)
    return x.index_select(dim, idx)


def unshard(shards: list[Tensor], *, layout: str = "contiguous", dim: int = -2) -> Tensor:
    """The full tensor from every rank's shard (in rank order): the inverse of :func:`shard`."""
    lay = make_layout(layout, len(shards))
    n = shards[0].shape[dim]
    order = torch.cat([lay.positions(r, n) for r in range(lay.world)])  # global position of each row
    cat = torch.cat(shards, dim=dim)
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.numel())
    return cat.index_select(dim, inv.to(cat.device))
