"""Attention past one machine: context parallelism on torch.distributed (gloo on CPU, NCCL on GPU).

- :func:`ring_attention`: q/k/v sharded along the sequence; ``mode="ring"`` (mask-aware K/V
  transfers), ``"allgather"`` (reference), ``"ulysses"`` (head all-to-all).
- :func:`shard` / :func:`unshard`: cut a full tensor into a rank's shard and back
  (``layout="contiguous"`` or ``"zigzag"``).
- :func:`ring_plan`: which rank needs which K/V shard, computed alike on every rank.
"""

from attnlab.distributed.attention import MODES, ring_attention
from attnlab.distributed.layout import LAYOUTS, Layout, make_layout, shard, unshard
from attnlab.distributed.plan import RingPlan, ring_plan
from attnlab.distributed.ring import CommStats

__all__ = ["LAYOUTS", "MODES", "CommStats", "Layout", "RingPlan", "make_layout", "ring_attention",
           "ring_plan", "shard", "unshard"]
