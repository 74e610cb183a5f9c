"""The ``tiled`` backend: flash-style attention in plain PyTorch, sparse where the mask is.

- Online softmax over key blocks, returns ``lse`` (FlashAttention, Dao et al. 2022, Alg. 1);
  memory O(Lq·Dh + tile budget) instead of O(Lq·Lk).
- Backward recomputes tiles from the saved lse (Alg. 2): training memory is linear too.
- Any mask_mod and score_mod (FlexAttention's signatures). A block map derived from the mask's
  pattern (blockmap.py) skips empty tiles and leaves full tiles unmasked, so causal,
  sliding-window, document and sparse masks cost in proportion to the tiles they touch.
- No compile step: tiles are stacked into a few large batched matmuls (plan.py); sliding
  windows read their key bands as strided views, with no Python loop over blocks.
- CPU-only: its tiles run on this process's CPU threads (parallel.py) and its fused tiles on
  ATen's CPU kernels (fused.py). Tensors on another device are refused (``auto`` never picks it
  for them; SDPA serves them there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor

from attnlab.backends.dispatch import attention
from attnlab.backends.nonfinite import values_finite
from attnlab.backends.registry import AttentionCall, Backend, Capabilities, register_backend
from attnlab.backends.tiled import fused as tiled_fused
from attnlab.backends.tiled.autograd import TiledConfig, backward_at, tiled_function
from attnlab.backends.tiled.blockmap import block_map
from attnlab.backends.tiled.options import choose_blocks, current_options, tiled_options
from attnlab.backends.tiled.parallel import owned_threads, workers
from attnlab.backends.tiled.plan import Plan, build_plan
from attnlab.backends.tiled.sparse import decompose, gather_rows, residue_unview, residue_view
from attnlab.backends.tiled.tiles import TileContext
from attnlab.backends.tiled.tuning import AUTO_MIN_PAIRS, CHUNKS_PER_THREAD
from attnlab.functional.attention import HALF, AttentionOutput, ScoreMod
from attnlab.functional.masks import Mask
from attnlab.functional.masks.parts import Part
from attnlab.functional.softmax import merge_partials


def _run_one(q: Tensor, k: Tensor, v: Tensor, mask: Mask | None, dense: Tensor | None,
             bias: Tensor | None, score_mod: ScoreMod | None, scale: float,
             finite: bool) -> tuple[Tensor, Tensor]:
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    budget = current_options().budget

    # GQA heads packed into one fused problem when the tiles run fused (fused._call_groups)
    packed = H // k.shape[1] if tiled_fused.fused_ok(q, v, score_mod is not None or bias is not None,
                                                      not finite) else 1

    def setup(backward: bool) -> tuple[TileContext, Plan]:
        bq, bk = choose_blocks(mask, Lq, Lk, backward=backward, packed_heads=packed)
        bm = block_map(mask, Lq, Lk, bq, bk, batch=B, heads=H, dense=dense)
        plan = build_plan(bm, B * H, budget, min_chunks=CHUNKS_PER_THREAD * workers())
        tc = TileContext(B, H, Lq, Lk, mask=mask, dense=dense, bias=bias, score_mod=score_mod,
                         bq=bq, bk=bk)
        return tc, plan

    # The call's own small ops (setup, padding) run single-threaded, its tiles on the workers.
    with owned_threads():
        tc, plan = setup(False)
        cfg = TiledConfig(tc, plan, scale, sanitize=not finite,
                          capture=torch.is_grad_enabled() and tc.captures_grad(),
                          backward_setup=lambda: setup(True))
        return tiled_function(q, k, v, cfg)


def check_cpu(*tensors: Tensor) -> None:
    """Refuse tensors off the CPU: the tiled kernel is CPU-only (module docstring)."""
    off = next((t.device for t in tensors if t.device.type != "cpu"), None)
    if off is not None:
        raise ValueError(f"backend: 'tiled' is CPU-only (got tensors on {off}); use backend='auto' (SDPA "
                         f"there) or 'sdpa' / 'eager'")


def attention_backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor,
                       dlse: Tensor | None = None, *, mask: Mask | None = None,
                       score_mod: ScoreMod | None = None, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dq, dk, dv) of tiled attention at a given context ``out`` and ``lse`` and their
    gradients, without re-running the forward: q (B, H, Lq, D), k/v (B, Hkv, Lk, D|Dv), out and
    dout (B, H, Lq, Dv), lse and dlse (B, H, Lq), float32 or float64. With the out and lse of a
    softmax over more keys than ``k`` holds (merged by lse), the result is the share of dq that
    flows through these keys and their dk, dv: the backward of ring attention. Score_mods with
    learnable tensors get no gradient here."""
    check_cpu(q, k, v)
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    bq, bk = choose_blocks(mask, Lq, Lk, backward=True)
    bm = block_map(mask, Lq, Lk, bq, bk, batch=B, heads=H)
    plan = build_plan(bm, B * H, current_options().budget,
                      min_chunks=CHUNKS_PER_THREAD * workers())
    tc = TileContext(B, H, Lq, Lk, mask=mask, score_mod=score_mod, bq=bq, bk=bk)
    finite = values_finite(k) and values_finite(v)
    return backward_at(q, k, v, out, lse, dout, dlse, tc, plan, scale, not finite)


def computed_pairs(mask: Mask | None, q_len: int, kv_len: int, *, packed_heads: int = 1) -> int:
    """(query, key) pairs the forward computes for one (batch, head): the touched tiles of every
    part the mask is run as (the decomposition and tile shapes of :func:`run_tiled`). The
    allowed pairs over this is the share of the arithmetic that is useful: what tiling, and
    not the kernel, costs a pattern (benchmarks report it). ``packed_heads``: query heads per
    K/V head (GQA) when the tiles run fused (their tile shape depends on it)."""
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
        bq, bk = choose_blocks(m, lq, lk, packed_heads=packed_heads if p is None or p.residue is None else 1)
        total += mult * block_map(m, lq, lk, bq, bk).cols.numel() * bq * bk
    return total


def run_tiled(call: AttentionCall) -> AttentionOutput:
    check_cpu(call.q, call.k, call.v)  # dispatch refuses them first (Capabilities.non_cpu)
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
    # Non-finite k or v take the kernel's sanitising path; one pass per call, and v only when
    # dispatch has not checked it already (values_finite: a sum, ~30x cheaper than isfinite().all()).
    with owned_threads():  # one small sum: no OpenMP region (parallel.owned_threads)
        finite = values_finite(call.k) and (call.v_finite or values_finite(call.v))
    nm = call.mask
    dense = nm.dense.expand(-1, -1, Lq, Lk) if nm.dense is not None else None  # (B|1, H|1, Lq, Lk)
    bias = nm.bias.expand(-1, -1, Lq, Lk) if nm.bias is not None else None  # (B|1, H|1, Lq, Lk)
    parts = None
    if dense is None and bias is None and call.score_mod is None:
        # strided / fixed / dilated: dense-ish pieces
        parts = decompose(nm.mod, Lq, Lk, views=call.k.shape[1] == call.q.shape[1])
    if not parts:
        ctx, lse = _run_one(call.q, call.k, call.v, nm.mod, dense, bias, call.score_mod, call.scale, finite)
        return AttentionOutput(ctx, None, lse)
    outs = []
    for p in parts:
        q, k, v = call.q, call.k, call.v
        if p.residue is not None:  # classes as heads of strided views
            B, H = q.shape[:2]
            rq, rk, rv = (residue_view(t, p.residue) for t in (q, k, v))
            # (B·H, d, L/d, Dv), (B·H, d, L/d)
            ctx, lse = _run_one(rq, rk, rv, p.mask, None, None, None, call.scale, finite)
            outs.append((residue_unview(ctx, B, H), residue_unview(lse, B, H)))
            continue
        if p.k_index is not None:
            k, v = gather_rows(k, p.k_index), gather_rows(v, p.k_index)  # (B, Hkv, Lk', D)
        if p.q_perm is not None:
            q = gather_rows(q, p.q_perm)  # (B, H, Lq, D), reordered
        ctx, lse = _run_one(q, k, v, p.mask, None, None, None, call.scale, finite)
        if p.q_perm is not None:
            inv = torch.empty_like(p.q_perm)
            inv[p.q_perm] = torch.arange(Lq)
            ctx = gather_rows(ctx, inv)  # (B, H, Lq, Dv), back in query order
            lse = gather_rows(lse.unsqueeze(-1), inv).squeeze(-1)  # (B, H, Lq) -> (B, H, Lq, 1) -> (B, H, Lq)
        outs.append((ctx, lse))
    # The parts' contexts are fresh tensors: merged in place unless autograd needs them.
    grads = torch.is_grad_enabled() and any(c.requires_grad for c, _ in outs)
    ctx, lse = merge_partials(outs, inplace=not grads) if len(outs) > 1 else outs[0]
    return AttentionOutput(ctx, None, lse)


def tiled_attention(q: Tensor, k: Tensor, v: Tensor, *, mask: object = None,
                    score_mod: ScoreMod | None = None, scale: float | None = None,
                    block_size: int | None = None, budget: int | None = None) -> AttentionOutput:
    """Tiled attention directly: ``attnlab.attention(..., backend="tiled")`` (the same checks and
    results) with an optional tile size and budget. Returns context and lse (weights: see
    :func:`~attnlab.backends.weights_for`)."""
    with tiled_options(block_size=block_size, budget=budget):
        return attention(q, k, v, mask=mask, score_mod=score_mod, scale=scale, backend="tiled")


def prefers_tiled(call: AttentionCall) -> bool:
    """long calls (Lq·Lk >= AUTO_MIN_PAIRS, about 1024 x 1024) with a score_mod, or with a
    mask_mod SDPA would have to materialise (anything but full and a causal mask SDPA runs as
    is_causal): sliding windows, documents, padding, prefix, bottom-right causal, the sparse
    patterns, combinations and custom mask_mods; its block map skips their empty tiles."""
    _, _, Lq, Lk = call.shape
    if Lq * Lk < AUTO_MIN_PAIRS:
        return False
    m = call.mask
    if call.score_mod is not None:
        return True
    if m.dense is not None or m.bias is not None or m.mod is None:
        return False  # already materialised (or no mask): SDPA's fused kernels
    # A mask SDPA takes without materialising it (full, plain causal): leave it there.
    return m.mod.pattern.sdpa_form(Lq, Lk) is None


TILED = register_backend(Backend(
    name="tiled",
    description="flash-style online softmax over a block map; any mask_mod/score_mod; lse; "
                "linear memory in fwd and bwd; no compile",
    capabilities=Capabilities(returns_weights=False, returns_lse=True, mask_mod=True,
                              dense_mask=True, score_mod=True, dropout=False, backward=True,
                              non_cpu=False),
    run=run_tiled,
    auto_rank=40,
    prefers=prefers_tiled,
))
