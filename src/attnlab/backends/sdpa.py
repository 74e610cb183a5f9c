"""torch.nn.functional.scaled_dot_product_attention behind attnlab's semantics.

Conversions at this boundary (and nowhere else):
- attnlab bool masks (True = may attend) are SDPA's bool polarity too; additive biases are
  folded into one float mask with -inf at masked positions. The bias stays float32 for
  float16/bfloat16 inputs (SDPA takes a float mask with any q dtype and adds it in its float32
  accumulator), so it means the same as in the eager reference (mask_input.py).
- Fully masked rows: SDPA's kernels may return NaN there. Those rows are given a harmless
  all-visible mask and their outputs replaced by exact zeros afterwards (so gradients into
  them are zero as well).
- Keys that no query may see are zeroed, when they hold a NaN/inf, so it never leaks.
- A mask whose pattern has an SDPA form (plain causal, full, a decode step) runs without a
  mask tensor: ``is_causal=True`` or no mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnlab.backends.registry import AttentionCall, Backend, Capabilities, register_backend
from attnlab.functional.attention import AttentionOutput
from attnlab.functional.mask_input import allowed_dense
from attnlab.functional.masks.base import SdpaForm


def _mask_free_form(call: AttentionCall) -> SdpaForm | None:
    """"causal" / "full" when the mask is a pattern SDPA runs without a mask tensor (plain causal
    as is_causal, a KV-cache decode step as no mask); None when it must be materialised."""
    m = call.mask
    if m.mod is None or m.dense is not None or m.bias is not None:
        return None
    return m.mod.pattern.sdpa_form(call.q.shape[2], call.k.shape[2])


def _finite_where_unused(k: torch.Tensor, v: torch.Tensor, used_kv: torch.Tensor) -> bool:
    """Whether K and V are finite at every key column some row may not see: then zeroing them
    changes nothing. Reads only those columns (the padding and removed keys of a batched decode
    step), where the zeroing copied the whole cache at every step and layer."""
    cols = (~used_kv[..., 0]).any(0).any(0).nonzero().flatten()  # (J,)
    return bool(torch.isfinite(k.index_select(2, cols).sum())) and \
        bool(torch.isfinite(v.index_select(2, cols).sum()))


def run_sdpa(call: AttentionCall) -> AttentionOutput:
    q, k, v = call.q, call.k, call.v
    gqa = q.shape[1] != k.shape[1]
    p = call.dropout_p if call.dropout_active else 0.0
    form = None if call.mask.empty else _mask_free_form(call)
    if call.mask.empty or form is not None:
        causal = form == "causal"
        ctx = F.scaled_dot_product_attention(
            q, k, v, dropout_p=p, is_causal=causal, scale=call.scale, enable_gqa=gqa
        )
        return AttentionOutput(ctx)

    allowed = allowed_dense(call.mask, call.shape, q.device)  # bool, broadcastable
    empty_rows = None
    attn_mask = None
    if allowed is not None:
        allowed = allowed.expand(call.shape)  # (B, Hq, Lq, Lk)
        empty_rows = ~allowed.any(dim=-1, keepdim=True)  # (B, Hq, Lq, 1)
        if bool(empty_rows.any()):
            allowed = allowed | empty_rows  # harmless row; output zeroed below
        else:
            empty_rows = None
        # Zero K/V columns no query may see (NaN safety), per KV head.
        used = allowed.any(dim=-2)  # (B, Hq, Lk)
        if not bool(used.all()):
            hkv = k.shape[1]
            used_kv = used.unflatten(1, (hkv, -1)).any(dim=2).unsqueeze(-1)  # (B, Hkv, Lk, 1)
            if not _finite_where_unused(k, v, used_kv):
                zero = torch.zeros((), dtype=k.dtype, device=k.device)
                k, v = torch.where(used_kv, k, zero), torch.where(used_kv, v, zero)
        attn_mask = allowed
    if call.mask.bias is not None:
        bias = call.mask.bias  # float32 (float64 for float64 q): see mask_input.bias_dtype
        attn_mask = bias if attn_mask is None else bias.masked_fill(~attn_mask, float("-inf"))
    ctx = F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=p, scale=call.scale, enable_gqa=gqa
    )  # (B, Hq, Lq, Dv)
    if empty_rows is not None:
        ctx = torch.where(empty_rows, torch.zeros((), dtype=ctx.dtype, device=ctx.device), ctx)
    return AttentionOutput(ctx)


SDPA = register_backend(Backend(
    name="sdpa",
    description="torch SDPA (fused CPU kernels); masks materialised, no weights, no score_mod",
    capabilities=Capabilities(returns_weights=False, returns_lse=False, mask_mod=True,
                              dense_mask=True, score_mod=False, dropout=True, backward=True),
    run=run_sdpa,
    auto_rank=60,
))
