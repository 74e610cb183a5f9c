"""Data-parallel training under torchrun: DistributedDataParallel on gloo (CPU) or NCCL (GPU).

``attnlab train ...`` started by ``torchrun --nproc-per-node N`` (or across machines with
torchrun's rendezvous) finds RANK / WORLD_SIZE in its environment and trains as one of N:

- every rank holds the whole corpus and walks the same batch order (a function of seed and
  epoch, data/batching.py); each takes examples rank, rank + N, ... of every global batch, so
  every rank takes part in every step whatever the batch sizes (no uneven-input hang). A rank
  whose share of a tiny last batch is empty runs one example with zero weight, so DDP's
  gradient all-reduce still has all ranks;
- each rank's summed token loss is divided by the *global* batch's target-token count and
  multiplied by N: DDP averages gradients, so the step equals one process on the whole batch
  (up to float summation order) and every rank ends each step bit-identical;
- rank 0 validates and broadcasts the scores (early stopping and the LR schedule decide alike
  everywhere), writes checkpoints (holding every rank's torch RNG state, for exact resume)
  and results; the others wait for it at the points that need it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DataParallel:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def share(self, indices: list[int]) -> tuple[list[int], bool]:
        """This rank's examples of a global batch, and whether they carry weight (False: a
        stand-in example run with zero weight because the batch has fewer examples than ranks)."""
        mine = indices[self.rank::self.world]
        return (mine, True) if mine else (indices[:1], False)

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.active:
            return model
        # DDP broadcasts rank 0's parameters at construction: every rank starts identical.
        return nn.parallel.DistributedDataParallel(model)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """A scalar summed over ranks (the global batch's loss, for the logs)."""
        if self.active:
            t = t.clone()
            dist.all_reduce(t)
        return t

    def broadcast_floats(self, values: list[float]) -> list[float]:
        """Rank 0's values on every rank (float64: BLEU and chrF keep every digit)."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.broadcast(t, src=0)
        return [float(x) for x in t]

    def agree(self, error: str | None) -> None:
        """Raise the same error on every rank when rank 0 failed (e.g. an --out that holds a
        run), instead of leaving the others waiting for it."""
        if not self.active:
            if error:
                raise RuntimeError(error)
            return
        msg = (error or "").encode()[:4000]
        t = torch.zeros(4096, dtype=torch.uint8)
        t[: len(msg)] = torch.tensor(list(msg), dtype=torch.uint8)
        dist.broadcast(t, src=0)
        text = bytes(t[t != 0].tolist()).decode(errors="replace")
        if text:
            raise RuntimeError(text if not self.main else error or text)

    def gather_rng(self) -> list[torch.Tensor]:
        """Every rank's torch RNG state, on every rank (rank order)."""
        mine = torch.get_rng_state()
        if not self.active:
            return [mine]
        got = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(got, mine)
        return got


def from_env() -> DataParallel:
    """The process's place in a torchrun job (RANK, WORLD_SIZE), joining its process group;
    a plain process is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DataParallel()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, init_method="env://")
    return DataParallel(dist.get_rank(), dist.get_world_size())

