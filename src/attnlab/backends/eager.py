"""The reference backend: plain PyTorch, materialises scores, returns weights and lse."""

from __future__ import annotations

from attnlab.backends.registry import AttentionCall, Backend, Capabilities, register_backend
from attnlab.functional.attention import AttentionOutput, reference_attention
from attnlab.functional.mask_input import allowed_dense


def run_eager(call: AttentionCall) -> AttentionOutput:
    allowed = allowed_dense(call.mask, call.shape, call.q.device)
    return reference_attention(
        call.q, call.k, call.v, allowed=allowed, bias=call.mask.bias, score_mod=call.score_mod,
        scale=call.scale, dropout_p=call.dropout_p, training=call.training,
    )


EAGER = register_backend(Backend(
    name="eager",
    description="reference: materialises (B,H,Lq,Lk) scores; weights, lse, score_mod, dropout",
    capabilities=Capabilities(returns_weights=True, returns_lse=True, mask_mod=True,
                              dense_mask=True, score_mod=True, dropout=True, backward=True),
    run=run_eager,
    auto_rank=50,
    # auto uses eager only when something else cannot serve: weights or a score_mod.
    prefers=lambda call: call.return_weights or call.score_mod is not None,
))
