"""``attn_implementation="attnlab"``: every attention call of a transformers model through
:func:`attnlab.backends.dispatch.attention`, with attnlab's hook points on each module.

It follows transformers' attention-interface contract (integrations/sdpa_attention.py and the
models' ``eager_attention_forward``): called as ``fn(module, query, key, value,
attention_mask, dropout=, scaling=, **kwargs)`` with q (B, H, Lq, Dh) after RoPE and k, v
(B, Hkv, Lk, Dh) after the cache update (unexpanded: attnlab shares K/V heads itself); it
returns the context as (B, Lq, H, Dh) and the weights (B, H, Lq, Lk) or None. Gemma 2's
``softcap`` kwarg becomes the score_mod ``softcap · tanh(score / softcap)``; ``dropout`` runs in
training; ``output_attentions`` asks for the weights (eager returns them; tiled's come from its
log-sum-exp through ``weights_for``; sdpa has none and gives None, as transformers' sdpa does).

The mask arrives as :class:`~attnlab.models.hf_bridge.masks.BridgeMask` from the mask function
registered beside this one (masks.py), or as a tensor (converted by ``tensor_mask``), or None.
Registration is explicit and idempotent (:func:`register`), never at import (attnlab's rule).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from attnlab.backends.dispatch import attention
from attnlab.backends.registry import current_backend, get_backend
from attnlab.backends.weights import weights_for
from attnlab.functional.attention import ScoreMod, expand_kv
from attnlab.functional.masks import Mask, causal, materialize
from attnlab.functional.score_mods import compose
from attnlab.functional.score_mods import softcap as softcap_mod
from attnlab.models.hf_bridge.context import current_options
from attnlab.models.hf_bridge.masks import BridgeMask, attnlab_mask, tensor_mask, to_call
from attnlab.modules.hooks import HookPoint

NAME = "attnlab"


class AttentionHooks(nn.Module):
    """attnlab's hook points of one bridged attention module (no parameters, no state)."""

    def __init__(self) -> None:
        super().__init__()
        self.hook_q = HookPoint()  # (B, H, Lq, Dh) after RoPE
        self.hook_k = HookPoint()  # (B, Hkv, Lk, Dh) cache included
        self.hook_v = HookPoint()  # (B, Hkv, Lk, Dh)
        self.hook_pattern = HookPoint()  # (B, H, Lq, Lk) post-softmax; a tensor returned replaces it
        self.hook_z = HookPoint()  # (B, H, Lq, Dh) per-head context; a tensor returned replaces it


def hooks_of(module: nn.Module) -> AttentionHooks:
    """The module's ``attnlab_hooks`` child, attached on first use."""
    hooks = module._modules.get("attnlab_hooks")
    if not isinstance(hooks, AttentionHooks):
        hooks = AttentionHooks()
        module.add_module("attnlab_hooks", hooks)
    return hooks


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """A transformers model's self-attention modules, index i = ``layer_idx`` i, each with its
    ``attnlab_hooks`` attached. The modules the interface calls are those with an int
    ``layer_idx`` whose class name ends in "Attention" (transformers' naming)."""
    found: dict[int, nn.Module] = {}
    for name, m in model.named_modules():
        idx = getattr(m, "layer_idx", None)
        if type(m).__name__.endswith("Attention") and isinstance(idx, int) and not isinstance(idx, bool):
            if idx in found:
                raise ValueError(f"model: expected one attention module per layer_idx, got two for "
                                 f"layer {idx} ({type(found[idx]).__name__} and {name})")
            found[idx] = m
    if sorted(found) != list(range(len(found))) or not found:
        raise ValueError(f"model: expected attention modules with layer_idx 0..n-1 in "
                         f"{type(model).__name__}, got {sorted(found)}")
    mods = [found[i] for i in range(len(found))]
    for m in mods:
        hooks_of(m)
    return mods


def register() -> None:
    """Register "attnlab" with transformers' ``AttentionInterface`` and ``AttentionMaskInterface``
    (idempotent); then ``from_pretrained(..., attn_implementation="attnlab")`` or
    ``model.set_attn_implementation("attnlab")`` routes attention through attnlab."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    if AttentionInterface._global_mapping.get(NAME) is not attnlab_attention:
        AttentionInterface.register(NAME, attnlab_attention)
    if AttentionMaskInterface._global_mapping.get(NAME) is not attnlab_mask:
        AttentionMaskInterface.register(NAME, attnlab_mask)


def _shift_mod(mod: ScoreMod, qo: int, ko: int) -> ScoreMod:
    if qo == 0 and ko == 0:
        return mod
    return lambda s, b, h, q, kv: mod(s, b, h, q + qo, kv + ko)


def _and(base: Mask | Tensor | None, extra: Mask | None, shape: tuple[int, int, int, int]) -> object:
    """The model's mask AND an intervention mask (both in call coordinates)."""
    if extra is None:
        return base
    if base is None or isinstance(base, Mask):
        return extra if base is None else base & extra
    B, H, Lq, Lk = shape
    ok = materialize(extra, Lq, Lk, batch=B, heads=H, device=base.device)  # (B, H, Lq, Lk)
    return base & ok if base.dtype == torch.bool else base.masked_fill(~ok, float("-inf"))


def _model_mask(attention_mask: object, module: nn.Module, is_causal: bool | None,
                Lq: int, Lk: int) -> tuple[Mask | Tensor | None, int, int]:
    """(mask in call coordinates, q_offset, kv_offset) from what transformers passed."""
    if isinstance(attention_mask, BridgeMask):
        if attention_mask.kv_length != Lk or attention_mask.q_length != Lq:
            raise ValueError(f"attention_mask: built for {attention_mask.q_length} queries x "
                             f"{attention_mask.kv_length} keys, the call has {Lq} x {Lk}")
        return attention_mask.mask, attention_mask.q_offset, attention_mask.kv_offset
    if isinstance(attention_mask, Tensor):  # the newest Lq of Lk positions
        return tensor_mask(attention_mask, Lq, Lk), Lk - Lq, 0
    if attention_mask is not None:
        raise TypeError(f"attention_mask: expected a BridgeMask, a 4-D tensor or None, got "
                        f"{type(attention_mask).__name__} (is the model's mask interface 'attnlab'?)")
    causal_call = getattr(module, "is_causal", True) if is_causal is None else is_causal
    # None and causal: what SDPA's is_causal means, aligned on the newest keys (a cache)
    return (causal("bottom-right") if causal_call and Lq > 1 else None), Lk - Lq, 0


def _wants_weights(backend: str) -> tuple[bool, bool]:
    """(the backend returns weights, it returns lse) for "auto" or a name."""
    if backend == "auto":
        return True, True
    caps = get_backend(backend).capabilities
    return caps.returns_weights, caps.returns_lse


def attnlab_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                      attention_mask: object, dropout: float = 0.0, scaling: float | None = None,
                      softcap: float | None = None, is_causal: bool | None = None,
                      **kwargs: Any) -> tuple[Tensor, Tensor | None]:
    """The registered attention function (signature of transformers' sdpa_attention_forward)."""
    opts = current_options()
    layer = getattr(module, "layer_idx", None)
    hooks = hooks_of(module)
    q = hooks.hook_q(query)  # (B, H, Lq, Dh)
    k = hooks.hook_k(key)  # (B, Hkv, Lk, Dh)
    v = hooks.hook_v(value)  # (B, Hkv, Lk, Dh)
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    base, qo, ko = _model_mask(attention_mask, module, is_causal, Lq, Lk)
    extra = opts.mask_for(layer)
    mask = _and(base, None if extra is None else to_call(extra, qo, ko, Lq, Lk), (B, H, Lq, Lk))
    user = opts.score_mod_for(layer)
    mods = [m for m in (None if softcap is None else softcap_mod(float(softcap)),
                        None if user is None else _shift_mod(user, qo, ko)) if m is not None]
    score_mod = None if not mods else mods[0] if len(mods) == 1 else compose(*mods)
    backend = opts.backend or current_backend()
    config = getattr(module, "config", None)
    output_attentions = bool(kwargs.get("output_attentions", getattr(config, "output_attentions", False)))
    need_pattern = output_attentions or bool(hooks.hook_pattern._forward_hooks)
    returns_w, returns_lse = _wants_weights(backend)
    try:
        out = attention(q, k, v, mask=mask, score_mod=score_mod, scale=scaling, dropout_p=dropout,
                        training=module.training, return_weights=need_pattern and returns_w,
                        backend=backend)
    except ValueError as e:
        raise ValueError(f"{type(module).__name__} (layer {layer}) through attnlab: {e}") from None
    weights, z = out.weights, out.context  # (B, H, Lq, Lk) or None, (B, H, Lq, Dh)
    if need_pattern and weights is None and returns_lse and out.lse is not None:
        weights = weights_for(q, k, out.lse, mask=mask, score_mod=score_mod, scale=scaling)
    if weights is not None:
        patched = hooks.hook_pattern(weights)
        if patched is not weights:  # a hook replaced the pattern: recompute the context from it
            z = patched.to(v.dtype) @ expand_kv(v, H)  # (B, H, Lq, Lk) @ (B, H, Lk, Dh)
            weights = patched
    elif hooks.hook_pattern._forward_hooks:
        raise ValueError(f"hook_pattern: layer {layer} has hooks, but backend {backend!r} returns "
                         f"no weights; use backend 'eager' or 'tiled'")
    z = hooks.hook_z(z)  # (B, H, Lq, Dh)
    return z.transpose(1, 2).contiguous(), (weights if output_attentions else None)  # (B, Lq, H, Dh)

