"""The tile shape: chosen from the mask's span, or set for a block with :func:`tiled_options`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, replace

from attnlab.backends.tiled.tuning import (
    DEFAULT_BUDGET,
    LARGE_TILE,
    LAYOUT_TILE_MAX,
    LAYOUT_TILE_MIN,
    MEDIUM_SPAN,
    MEDIUM_TILE,
    PACKED_MIN_ROWS,
    SMALL_SPAN,
    SMALL_TILE,
)
from attnlab.functional.masks import Mask


@dataclass(frozen=True)
class TiledOptions:
    block_q: int | None = None  # None: chosen from the mask (choose_blocks)
    block_k: int | None = None
    budget: int = DEFAULT_BUDGET  # score elements per batched tile, all heads


_OPTIONS: ContextVar[TiledOptions] = ContextVar(
    "attnlab_tiled_options", default=TiledOptions())  # noqa: B039 - frozen, never mutated


def current_options() -> TiledOptions:
    return _OPTIONS.get()


@contextlib.contextmanager
def tiled_options(*, block_size: int | None = None, block_q: int | None = None,
                  block_k: int | None = None, budget: int | None = None) -> Iterator[TiledOptions]:
    """Override the tile shape for calls inside the block (tests, tuning)."""
    for nm, val in (("block_size", block_size), ("block_q", block_q), ("block_k", block_k),
                    ("budget", budget)):
        if val is not None and (isinstance(val, bool) or not isinstance(val, int) or val < 1):
            raise ValueError(f"{nm}: expected a positive int, got {val!r}")
    cur = _OPTIONS.get()
    new = replace(cur, block_q=block_q or block_size or cur.block_q,
                  block_k=block_k or block_size or cur.block_k, budget=budget or cur.budget)
    token = _OPTIONS.set(new)
    try:
        yield new
    finally:
        _OPTIONS.reset(token)


def choose_blocks(mask: Mask | None, q_len: int, kv_len: int, *, backward: bool = False,
                  packed_heads: int = 1) -> tuple[int, int]:
    """Tile shape (bq, bk) for a mask; options from :func:`tiled_options` take precedence.

    Tiles should be small next to the keys a row attends (the pattern's ``span``: waste at a
    band's edges is about bq / span) but big enough for efficient matmuls; block layouts get
    tiles aligned with their blocks. The backward's dK = dSᵀ·Q and dV = Pᵀ·dO products have bq
    as inner dimension: it never gets the small tile. ``packed_heads``: query heads stacked
    into one fused problem (GQA, fused._call_groups); the small tile grows until they fill
    PACKED_MIN_ROWS rows, from which ATen's loop runs taller GEMMs."""
    opt = _OPTIONS.get()
    layout = mask.pattern.layout_block if mask is not None else None
    if layout is not None:
        bq = bk = min(LAYOUT_TILE_MAX, max(LAYOUT_TILE_MIN, layout))
    else:
        span = kv_len if mask is None else mask.pattern.span(kv_len)
        small = SMALL_TILE if span < SMALL_SPAN and not backward else None
        while small is not None and packed_heads > 1 and small * packed_heads < PACKED_MIN_ROWS \
                and small < MEDIUM_TILE:
            small *= 2
        bq = bk = small or (MEDIUM_TILE if span < MEDIUM_SPAN else LARGE_TILE)
    bq, bk = opt.block_q or bq, opt.block_k or bk
    return max(1, min(bq, q_len)), max(1, min(bk, kv_len))
