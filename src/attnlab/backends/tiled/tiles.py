"""What one tile of the tiled kernel needs: 5-D index tensors plus the call's evaluator.

A tile covers ``nb`` query blocks of ``bq`` rows, each against its own band of key blocks
(``w`` blocks of ``bk`` keys), for every batch element and head at once:
scores are (B, H, nb, bq, w·bk). Index tensors are 5-D and broadcastable
(b (B,1,1,1,1), h (1,H,1,1,1), q (1,1,nb,bq,1), kv (1,1,nb,1,w·bk)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnlab.functional.evaluator import Evaluator


@dataclass
class TileContext(Evaluator):
    bq: int = 1
    bk: int = 1

    def __post_init__(self) -> None:
        self.b5 = torch.arange(self.batch).view(-1, 1, 1, 1, 1)  # (B,) -> (B, 1, 1, 1, 1)
        self.h5 = torch.arange(self.heads).view(1, -1, 1, 1, 1)  # (H,) -> (1, H, 1, 1, 1)

    def q_index(self, q_blocks: Tensor) -> Tensor:
        """(1, 1, nb, bq, 1) query positions of the chunk (may run past Lq: padding rows)."""
        rows = q_blocks.view(-1, 1) * self.bq + torch.arange(self.bq)  # (nb,) -> (nb, 1) + (bq,): (nb, bq)
        return rows.view(1, 1, -1, self.bq, 1)  # (nb, bq) -> (1, 1, nb, bq, 1)

    def kv_index(self, k_blocks: Tensor) -> Tensor:
        """(1, 1, nb, 1, w·bk) key positions of a band (may run past Lk: padding keys)."""
        cols = k_blocks.unsqueeze(-1) * self.bk + torch.arange(self.bk)  # (nb, w) -> (nb, w, 1) + (bk,)
        cols = cols.flatten(1)  # (nb, w, bk) -> (nb, w·bk)
        return cols.view(1, 1, cols.shape[0], 1, -1)  # (nb, w·bk) -> (1, 1, nb, 1, w·bk)
