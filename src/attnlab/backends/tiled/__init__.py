"""The ``tiled`` backend: flash-style online softmax over block maps, sparse where the mask is.

Read in this order: backend.py (the entry: parts, dtype, registration) -> options.py (tile
shape) -> blockmap.py and classify.py (which tiles to compute, from the mask's pattern) ->
plan.py (tiles stacked into batched GEMMs) -> autograd.py -> forward.py (Alg. 1: the tile step,
forward_tile) and backward.py (Alg. 2) -> tile_ops.py (what both passes share: views, masks,
buffers), gemm.py, tiles.py, fused.py (the tile arithmetic) -> parallel.py (worker threads) ->
sparse.py (patterns run as pieces). Every tuning constant is in tuning.py.
Importing this package registers the backend.
"""

from attnlab.backends.tiled.backend import (
    TILED,
    attention_backward,
    computed_pairs,
    prefers_tiled,
    run_tiled,
    tiled_attention,
)
from attnlab.backends.tiled.blockmap import BlockMap, block_map, count_allowed
from attnlab.backends.tiled.options import TiledOptions, choose_blocks, tiled_options

__all__ = [
    "TILED",
    "BlockMap",
    "TiledOptions",
    "attention_backward",
    "block_map",
    "choose_blocks",
    "computed_pairs",
    "count_allowed",
    "prefers_tiled",
    "run_tiled",
    "tiled_attention",
    "tiled_options",
]
