"""``attnlab.attention``: validate, normalise the mask, pick a backend, run, restore shapes."""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.backends.nonfinite import run_with_nonfinite_values, values_finite
from attnlab.backends.registry import (
    AttentionCall,
    choose_backend,
    current_backend,
    get_backend,
)
from attnlab.functional.attention import AttentionOutput, ScoreMod, validate_qkv
from attnlab.functional.checks import expect_probability
from attnlab.functional.mask_input import NormalizedMask, bias_dtype, normalize_mask
from attnlab.functional.score_mods import KeyBias
from attnlab.functional.scores import resolve_scale


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: object = None,
    score_mod: ScoreMod | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    training: bool = False,
    return_weights: bool = False,
    backend: str = "auto",
    v_finite: bool | None = None,
) -> AttentionOutput:
    """Scaled dot-product attention: softmax(score_mod(q·kᵀ·scale) + mask) · v.

    Shapes: q (B, Hq, Lq, Dh), k (B, Hkv, Lk, Dh), v (B, Hkv, Lk, Dv) with Hq divisible by
    Hkv (K/V heads are shared across query heads: GQA/MQA). (L, D) and (H, L, D) inputs work
    too, and results come back with the same number of dims.

    ``mask``: a mask_mod / :class:`Mask` (True = may attend), a bool tensor of the same
    polarity, or an additive float tensor. A query whose every key is masked gets a context
    of exact zeros, weights of zeros and zero gradients.

    ``scale`` defaults to 1/sqrt(Dh); pass 1.0 for unscaled dot-product attention.
    ``dropout_p`` applies only when ``training=True``; returned weights are pre-dropout.
    ``backend``: "auto", or a name from ``attnlab.backends.backend_names()``; also settable
    with ``attnlab.use_backend(name)``.
    ``v_finite``: True when the caller knows ``v`` holds no NaN/inf (a KV cache that checked
    each value as it came): the pass over the whole of ``v`` that looks for them is skipped.
    """
    qkv = validate_qkv(q, k, v)
    s = resolve_scale(scale, qkv.q.shape[-1])
    expect_probability("dropout_p", dropout_p)
    if score_mod is not None and not callable(score_mod):
        raise TypeError(
            f"score_mod: expected a callable(score, b, h, q_idx, kv_idx), got {type(score_mod).__name__}"
        )
    nm = normalize_mask(mask, qkv.shape, dtype=qkv.q.dtype, device=qkv.q.device)
    if isinstance(score_mod, KeyBias):  # query-free: a mask, which fused kernels take
        nm, score_mod = _fold_key_bias(nm, score_mod, qkv.shape, qkv.q.dtype), None
    call = AttentionCall(qkv.q, qkv.k, qkv.v, nm, score_mod, s, dropout_p,
                         bool(training), bool(return_weights))
    name = backend if backend != "auto" else current_backend()
    if name == "auto":
        chosen, _ = choose_backend(call)
    else:
        chosen = get_backend(name)
        why = chosen.unsupported(call)
        if why:
            raise ValueError(
                f"backend: {name!r} {' and '.join(why)}; use backend='auto' or one of the "
                f"backends whose capabilities fit (attnlab backends)"
            )
    # NaN/inf values must not reach rows that may not see their key (nonfinite.py).
    if v_finite or (v_finite is None and values_finite(call.v)):
        call.v_finite = True
        out = chosen.run(call)
    else:
        out = run_with_nonfinite_values(chosen, call)
    return AttentionOutput(
        qkv.restore(out.context),
        qkv.restore(out.weights) if return_weights else None,
        qkv.restore(out.lse),
    )


def _fold_key_bias(nm: NormalizedMask, kb: KeyBias, shape: tuple[int, int, int, int],
                   dtype: torch.dtype) -> NormalizedMask:
    """The mask that means the same as ``kb`` as a score_mod: -inf entries masked, the rest
    added (in bias_dtype, as every additive mask is)."""
    t = kb.dense(shape)  # (B|1, H|1, 1, Lk)
    removed = t == float("-inf")
    dense = nm.dense
    if bool(removed.any()):
        dense = ~removed if dense is None else dense & ~removed
    bias = nm.bias
    finite = torch.where(removed, torch.zeros((), dtype=t.dtype, device=t.device), t)
    if bool(finite.any()):
        finite = finite.to(bias_dtype(dtype))
        bias = finite if bias is None else bias + finite
    return NormalizedMask(mod=nm.mod, dense=dense, bias=bias)
