"""Differentiable all-gather and all-to-all on public torch.distributed calls.

torch.distributed.nn.functional has both but is deprecated (its replacement lives in a private
module); gloo has no reduce-scatter, so the all-gather's backward is an all-to-all of the
gradient slices followed by a sum, which every backend has.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from attnlab.distributed.agreement import wait_all

DEFAULT_WAIT = timedelta(seconds=120)


class _AllToAll(torch.autograd.Function):
    """(P, ...) -> (P, ...): slice i goes to rank i; slice j of the result came from rank j."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any, timeout: timedelta) -> Tensor:
        ctx.group, ctx.timeout = group, timeout
        x = x.contiguous()  # empty_like keeps a permuted input's strides: the buffer must be dense
        out = torch.empty_like(x)
        wait_all([dist.all_to_all_single(out, x, group=group, async_op=True)], timeout, "all-to-all")
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        work = dist.all_to_all_single(out, grad, group=ctx.group, async_op=True)  # reversed
        wait_all([work], ctx.timeout, "all-to-all (backward)")
        return out, None, None


def all_to_all(x: Tensor, group: Any = None, timeout: timedelta = DEFAULT_WAIT) -> Tensor:
    """x (P, ...): slice i is sent to rank i; returns (P, ...) with slice j received from rank j."""
    out: Tensor = _AllToAll.apply(x, group, timeout)
    return out


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any, timeout: timedelta) -> Tensor:
        ctx.group, ctx.timeout = group, timeout
        world = dist.get_world_size(group)
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world)]
        wait_all([dist.all_gather(parts, x, group=group, async_op=True)], timeout, "all-gather")
        return torch.stack(parts)  # (P, ...)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        # Rank j's gradient for my shard is grad[my rank] on rank j: all-to-all, then sum.
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        work = dist.all_to_all_single(out, grad, group=ctx.group, async_op=True)
        wait_all([work], ctx.timeout, "all-gather (backward)")
        return out.sum(0), None, None


def all_gather(x: Tensor, group: Any = None, timeout: timedelta = DEFAULT_WAIT) -> Tensor:
    """Every rank's x, stacked in rank order: (P, *x.shape)."""
    out: Tensor = _AllGather.apply(x, group, timeout)
    return out
