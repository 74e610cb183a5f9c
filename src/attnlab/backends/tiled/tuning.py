"""Every tuning constant of the tiled backend, with what it trades and where it was measured.

Measured on a 2-core AVX-512 CPU (benchmarks/RESULTS.md) unless said otherwise. Changing one is
a performance decision, never a correctness one: every value here gives the same results.
"""

from __future__ import annotations

# --- tile shape (options.choose_blocks) ---------------------------------------------------------
# Narrow bands waste less with small tiles (band = bq + span keys per bq rows), wide ones want
# bigger GEMMs (causal n=8k forward: 0.67 s at 128, 0.58 s at 256; the backward the same at both).
SMALL_TILE, MEDIUM_TILE, LARGE_TILE = 32, 64, 256
SMALL_SPAN, MEDIUM_SPAN = 1024, 4096  # a row's span below which the small / medium tile is used
# GQA packed into one fused problem (fused._call_groups): ATen's CPU flash loop splits a problem's
# rows into GEMMs of 32 rows, of 64 from 192 rows on (256 from 768). The small tile doubles (up to
# MEDIUM_TILE) until the packed heads fill this many rows. Gemma 3 (4 query heads on 1 K/V head,
# Dh 256, W 512) at 4k, 2 threads, CPU time: 64-row tiles 0.95x of 32 (despite 89 % useful pairs
# instead of 94 %), 128-row 1.14x; unpacked, 64-row tiles gained nothing.
PACKED_MIN_ROWS = 192
# Block layouts (BigBird, block-sparse): tiles aligned with the layout's blocks, within these.
LAYOUT_TILE_MIN, LAYOUT_TILE_MAX = 16, 512

# --- plan (plan.build_plan) ---------------------------------------------------------------------
DEFAULT_BUDGET = 1 << 23  # score elements per batched tile, all heads (processed head by head)
CHUNKS_PER_THREAD = 4  # query chunks per worker thread: enough to balance a busy machine

# --- GEMMs (gemm.py) ----------------------------------------------------------------------------
PER_HEAD_MAX = 64  # up to this many B·H, loop over heads: no band copies (see gemm._bmm)
PER_HEAD_MIN_TILE = 1 << 20  # score elements (all heads) from which a tile runs head by head

# --- backward (backward.py) ---------------------------------------------------------------------
# ATen's fused backward pays off on tall tiles only (one-off A/B, n=8k fwd+bwd, 2 cores: causal
# 256-row tiles 2.25 s -> 1.94 s, SDPA's own time; sliding window W=256 with 64-row tiles
# 205 -> 236 ms, block-sparse 128-row tiles 397 -> 425 ms): its dK/dV come back per band and
# are added again.
FUSED_BWD_MIN_ROWS = 256
# Fixed dK/dV groups per worker thread: more than one leaves the dynamic scheduler something to
# balance when the OS deschedules a worker, at the price of one more partial buffer each.
GROUPS_PER_THREAD = 2

# --- block maps (blockmap.py) -------------------------------------------------------------------
CHUNK_TILES = 1 << 22  # tiles classified per step when the predicate is evaluated
BLOCK_MAP_CACHE = 16  # block maps kept (per mask object and shape)
PLAN_CACHE = 16  # plans kept (per block map, heads, budget and chunk count)

# --- auto rule (backend.prefers_tiled) ----------------------------------------------------------
AUTO_MIN_PAIRS = 1 << 20  # Lq·Lk from which tiling pays off (about 1024 x 1024)
