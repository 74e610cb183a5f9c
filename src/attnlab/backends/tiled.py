"""The ``tiled`` backend: flash-style attention in plain PyTorch, sparse where the mask is.

- Online softmax over key blocks, returns ``lse`` (FlashAttention, Dao et al. 2022, Alg. 1);
  memory O(Lq·Dh + tile budget) instead of O(Lq·Lk).
- Backward recomputes tiles from the saved lse (Alg. 2): training memory is linear too.
- Any mask_mod and score_mod (FlexAttention's signatures). A block map derived from the mask
  (blockmap.py) skips empty tiles and leaves full tiles unmasked, so causal, sliding-window,
  document and sparse masks cost in proportion to the tiles they touch.
- No compile step: tiles are stacked into a few large batched matmuls (tiled_plan.py); sliding
  windows read their key bands as strided views, with no Python loop over blocks.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from attnlab.backends import tiled_fused
from attnlab.backends.blockmap import block_map
from attnlab.backends.registry import AttentionCall, Backend, Capabilities, register_backend
from attnlab.backends.tiled_autograd import TiledConfig, tiled_function
from attnlab.backends.tiled_plan import Plan, build_plan
from attnlab.backends.tiled_sparse import Part, decompose, merge, residue_unview, residue_view
from attnlab.backends.tiles import TileContext
from attnlab.functional.attention import HALF, AttentionOutput, ScoreMod, validate_qkv
from attnlab.functional.mask_input import normalize_mask
from attnlab.functional.masks import Mask
from attnlab.functional.scores import default_scale


@dataclass(frozen=True)
class TiledOptions:
    block_q: int | None = None  # None: chosen from the mask (choose_blocks)
    block_k: int | None = None
    budget: int = 1 << 23  # score elements per batched tile, all heads (processed head by head)


_OPTIONS: ContextVar[TiledOptions] = ContextVar(
    "attnlab_tiled_options", default=TiledOptions())  # noqa: B039 - frozen, never mutated


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


def _span(mask: Mask | None, kv_len: int) -> int:
    """Rough number of keys a row attends: tiles should be small next to it (waste at the
    band's edges is about bq / span) but big enough for efficient matmuls."""
    if mask is None:
        return kv_len
    p, k = mask.params, mask.kind
    if k == "sliding_window":
        return p["left"] + p["right"] + 1
    if k == "dilated_sliding_window":
        return (p["left"] + p["right"]) * p["dilation"] + 1
    if k == "longformer":
        return 2 * p["window"] + 1
    if k in ("sparse_strided", "sparse_fixed"):
        return p["stride"]
    if k == "intervals":
        return max(1, int((p["hi"] - p["lo"] + 1).clamp(min=0).float().mean()))
    if k == "document":
        return max(1, kv_len // max(1, int(torch.unique(p["kv_segments"]).numel())))
    if k == "and":
        return min(_span(m, kv_len) for m in mask.parts)
    if k == "or":
        return max(_span(m, kv_len) for m in mask.parts)
    if k in ("custom", "not"):
        return 256
    return kv_len


def choose_blocks(mask: Mask | None, q_len: int, kv_len: int, *, backward: bool = False) -> tuple[int, int]:
    """Tile shape (bq, bk) for a mask; options from :func:`tiled_options` take precedence.
    The backward's dK = dSᵀ·Q and dV = Pᵀ·dO products have bq as inner dimension: it gets
    tiles of at least 64 rows."""
    opt = _OPTIONS.get()
    if mask is not None and mask.kind in ("bigbird", "block_sparse"):
        b = min(512, max(16, mask.params["block_size"]))  # tiles aligned with the layout
        bq = bk = b
    else:
        # Measured on a 2-core AVX-512 CPU (benchmarks/RESULTS.md): narrow bands waste less with
        # small tiles (band = bq + span keys per bq rows), wide ones want bigger GEMMs (causal
        # n=8k forward: 0.67 s at 128, 0.58 s at 256; the backward is the same at both).
        span = _span(mask, kv_len)
        bq = bk = 32 if span < 1024 and not backward else 64 if span < 4096 else 256
    bq, bk = opt.block_q or bq, opt.block_k or bk
    return max(1, min(bq, q_len)), max(1, min(bk, kv_len))


def _run_one(q: Tensor, k: Tensor, v: Tensor, mask: Mask | None, dense: Tensor | None,
             bias: Tensor | None, score_mod: ScoreMod | None, scale: float) -> tuple[Tensor, Tensor]:
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    budget = _OPTIONS.get().budget

    def setup(backward: bool) -> tuple[TileContext, Plan]:
        bq, bk = choose_blocks(mask, Lq, Lk, backward=backward)
        bm = block_map(mask, Lq, Lk, bq, bk, batch=B, heads=H, dense=dense)
        plan = build_plan(bm, B * H, budget, min_chunks=4 * torch.get_num_threads())
        return TileContext(B, H, Lq, Lk, bq, bk, mask, dense, bias, score_mod), plan

    tc, plan = setup(False)
    # One cheap pass: a sum is finite only if every term is (an overflow merely costs the
    # slower sanitising path). torch.isfinite(x).all() is ~30x slower on a CPU.
    finite = bool(torch.isfinite(k.sum())) and bool(torch.isfinite(v.sum()))
    cfg = TiledConfig(tc, plan, scale, sanitize=not finite,
                      capture=torch.is_grad_enabled() and tc.captures_grad(),
                      backward_setup=lambda: setup(True))
    return tiled_function(q, k, v, cfg)


def computed_pairs(mask: Mask | None, q_len: int, kv_len: int) -> int:
    """(query, key) pairs the forward computes for one (batch, head): the touched tiles of every
    part the mask is run as (the decomposition and tile shapes of :func:`run_tiled`). The
    allowed pairs over this is the share of the arithmetic that is useful: what tiling, and
    not the kernel, costs a pattern (benchmarks report it)."""
    parts: Sequence[Part | None] = decompose(mask, q_len, kv_len) or [None]
    total = 0
    for p in parts:
        m, lq, lk, mult = mask, q_len, kv_len, 1
        if p is not None:
            m = p.mask
            if p.residue is not None:
                lq, lk, mult = q_len // p.residue, kv_len // p.residue, p.residue
            elif p.k_index is not None:
                lk = p.k_index.numel()
        bq, bk = choose_blocks(m, lq, lk)
        total += mult * block_map(m, lq, lk, bq, bk).cols.numel() * bq * bk
    return total


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x[:, :, index] for x (B, H, L, D). Residue-class orders (index = the transpose of an
    (L/b, b) grid of positions, as dilated and strided patterns use when b divides L) are a
    reshape: one strided copy, ~3x faster than index_select's row-by-row gather."""
    n = index.numel()
    if n == x.shape[2] and n > 1:
        b = int(index[1] - index[0])
        if 1 < b < n and n % b == 0 and int(index[0]) == 0:
            a = n // b
            if torch.equal(index, torch.arange(n).view(a, b).t().flatten()):
                B, H, _, D = x.shape
                return x.reshape(B, H, a, b, D).transpose(2, 3).reshape(B, H, n, D)  # (B, H, L, D)
    return x.index_select(2, index)


def run_tiled(call: AttentionCall) -> AttentionOutput:
    q = call.q
    grads = torch.is_grad_enabled() and any(t.requires_grad for t in (call.q, call.k, call.v))
    plain = call.mask.bias is not None or call.score_mod is not None or not tiled_fused.fused_available()
    if q.dtype in HALF and (grads or plain):
        # The plain-op tiles (a bias or score_mod) and the backward compute scores, exp(S - lse)
        # and lse in the input dtype; half precision there loses the logits (fp16 scores near
        # 8000 are 8 apart). Run them in float32 like the reference, return the input dtype;
        # the fused ATen tiles of a plain forward already accumulate in float32.
        up = replace(call, q=call.q.float(), k=call.k.float(), v=call.v.float())
        out = run_tiled(up)
        return AttentionOutput(out.context.to(q.dtype), None, out.lse)
    _, _, Lq, Lk = call.shape
    nm = call.mask
    dense = nm.dense.expand(-1, -1, Lq, Lk) if nm.dense is not None else None  # (B|1, H|1, Lq, Lk)
    bias = nm.bias.expand(-1, -1, Lq, Lk) if nm.bias is not None else None
    parts = None
    if dense is None and bias is None and call.score_mod is None:
        # strided / fixed / dilated: dense-ish pieces
        parts = decompose(nm.mod, Lq, Lk, views=call.k.shape[1] == call.q.shape[1])
    if not parts:
        ctx, lse = _run_one(call.q, call.k, call.v, nm.mod, dense, bias, call.score_mod, call.scale)
        return AttentionOutput(ctx, None, lse)
    outs = []
    for p in parts:
        q, k, v = call.q, call.k, call.v
        if p.residue is not None:  # classes as heads of strided views
            B, H = q.shape[:2]
            rq, rk, rv = (residue_view(t, p.residue) for t in (q, k, v))
            # (B·H, d, L/d, Dv), (B·H, d, L/d)
            ctx, lse = _run_one(rq, rk, rv, p.mask, None, None, None, call.scale)
            outs.append((residue_unview(ctx, B, H), residue_unview(lse, B, H)))
            continue
        if p.k_index is not None:
            k, v = gather_rows(k, p.k_index), gather_rows(v, p.k_index)  # (B, Hkv, Lk', D)
        if p.q_perm is not None:
            q = gather_rows(q, p.q_perm)  # (B, H, Lq, D), reordered
        ctx, lse = _run_one(q, k, v, p.mask, None, None, None, call.scale)
        if p.q_perm is not None:
            inv = torch.empty_like(p.q_perm)
            inv[p.q_perm] = torch.arange(Lq)
            ctx, lse = gather_rows(ctx, inv), gather_rows(lse.unsqueeze(-1), inv).squeeze(-1)  # query order
        outs.append((ctx, lse))
    ctx, lse = merge(outs) if len(outs) > 1 else outs[0]
    return AttentionOutput(ctx, None, lse)


def tiled_attention(q: Tensor, k: Tensor, v: Tensor, *, mask: object = None,
                    score_mod: ScoreMod | None = None, scale: float | None = None,
                    block_size: int | None = None, budget: int | None = None) -> AttentionOutput:
    """Tiled attention directly (``attnlab.attention(..., backend="tiled")`` is the same with the
    default tile shape). Returns context and lse (weights: see :func:`weights_for`)."""
    qkv = validate_qkv(q, k, v)
    s = default_scale(qkv.q.shape[-1]) if scale is None else float(scale)
    if not math.isfinite(s):
        raise ValueError(f"scale: expected a finite number or None, got {scale!r}")
    nm = normalize_mask(mask, qkv.shape, dtype=qkv.q.dtype, device=qkv.q.device)
    call = AttentionCall(qkv.q, qkv.k, qkv.v, nm, score_mod, s, 0.0, False, False)
    with tiled_options(block_size=block_size, budget=budget):
        out = run_tiled(call)
    return AttentionOutput(qkv.restore(out.context), None, qkv.restore(out.lse))


# Which calls ``auto`` gives to tiled (see registry.AUTO_RULE): long sequences with a
# structured mask or a score_mod, where the dense kernels would materialise Lq x Lk.
AUTO_MIN_PAIRS = 1 << 20  # Lq·Lk from which tiling pays off (about 1024 x 1024)
_DENSE_KINDS = ("full",)


def prefers_tiled(call: AttentionCall) -> bool:
    _, _, Lq, Lk = call.shape
    if Lq * Lk < AUTO_MIN_PAIRS:
        return False
    m = call.mask
    if call.score_mod is not None:
        return True
    if m.dense is not None or m.bias is not None or m.mod is None:
        return False  # already materialised (or no mask): SDPA's fused kernels
    mod = m.mod
    if mod.kind in _DENSE_KINDS:
        return False
    # A plain causal mask SDPA takes as is_causal (top-left, or square): leave it there.
    return not (mod.kind == "causal" and (mod.params.get("align") == "top-left" or Lq == Lk))


TILED = register_backend(Backend(
    name="tiled",
    description="flash-style online softmax over a block map; any mask_mod/score_mod; lse; "
                "linear memory in fwd and bwd; no compile",
    capabilities=Capabilities(returns_weights=False, returns_lse=True, mask_mod=True,
                              dense_mask=True, score_mod=True, dropout=False, backward=True),
    run=run_tiled,
    auto_rank=40,
    prefers=prefers_tiled,
))
