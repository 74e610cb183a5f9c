"""The masks transformers builds, as attnlab masks: structure kept where it is known for sure.

transformers builds every decoder mask through ``masking_utils.create_causal_mask`` /
``create_sliding_window_causal_mask``, which call the function registered under the model's
``attn_implementation`` in ``AttentionMaskInterface`` with the mask's geometry (batch size,
query/key lengths and offsets, the 2-D padding mask, ``local_size`` for sliding windows) and its
``mask_function`` (masking_utils.py, ``sdpa_mask`` shows the contract). :func:`attnlab_mask`
is that function for ``"attnlab"``. It returns a :class:`BridgeMask`: an attnlab mask in the
call's own coordinates plus the offsets, so that interventions can be placed at absolute
positions.

Structure is claimed only where it is certain: ``mask_function`` is transformers' own causal /
bidirectional function (identity), or exactly its sliding-window-causal closure (code objects
and closure contents checked, and its meaning checked once against attnlab's
``sliding_window``). Then causal / sliding_window / padding become attnlab mask_mods with
patterns (the tiled kernel skips empty tiles). Anything else (or/and overlays, packed
sequences, chunked attention) is transformers' own function, evaluated as a predicate, or, when
transformers asks for vmap, its dense mask. A tensor mask reaching the attention function is
converted in one place, :func:`tensor_mask`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from attnlab.functional.masks import Mask, Pattern, as_mask, causal, materialize, shifted, sliding_window


@dataclass(frozen=True)
class BridgeMask:
    """What :func:`attnlab_mask` hands the model: ``mask`` (None = every key) over the
    ``q_length`` x ``kv_length`` call whose first query / key sit at absolute positions
    ``q_offset`` / ``kv_offset``."""

    mask: Mask | Tensor | None
    q_offset: int
    kv_offset: int
    q_length: int
    kv_length: int


@dataclass(frozen=True, eq=False)
class KeyRange(Pattern):
    """Keys lo[b]..hi[b] (inclusive) visible to every query of batch row b: a left- or
    right-padded batch. Rows are key intervals (Bm = B), so tiles outside are skipped."""

    lo: Tensor  # (B,) int64
    hi: Tensor  # (B,) int64
    kind: ClassVar[str] = "key_range"

    def intervals(self, q_len: int, kv_len: int) -> tuple[Tensor, Tensor]:
        return self.lo.view(-1, 1).expand(-1, q_len), self.hi.view(-1, 1).expand(-1, q_len)  # (B, Lq)

    def span(self, kv_len: int) -> int:
        return kv_len


def key_range(lo: Tensor, hi: Tensor) -> Mask:
    def fn(b: Tensor, h: Tensor, q: Tensor, kv: Tensor, lq: int, lk: int) -> Tensor:
        return (kv >= lo.to(kv.device)[b]) & (kv <= hi.to(kv.device)[b])

    return Mask(fn, "key_range", KeyRange(lo, hi))


def padding_as_mask(keep: Tensor) -> Mask | None:
    """A (B, Lk_total) bool padding mask over absolute key positions: None when nothing is
    padded, a :func:`key_range` when every row's tokens are contiguous (left or right padding),
    else a predicate reading the tensor."""
    if bool(keep.all()):
        return None
    pos = torch.arange(keep.shape[1], device=keep.device).expand_as(keep)  # (B, Lk_total)
    count = keep.sum(-1)  # (B,)
    lo = torch.where(keep, pos, keep.shape[1]).amin(-1)  # (B,) first token
    hi = torch.where(keep, pos, -1).amax(-1)  # (B,) last token
    if bool(((hi - lo + 1) == count).all() & (count > 0).all()):
        return key_range(lo.cpu(), hi.cpu())
    return as_mask(lambda b, h, q, kv: keep[b, kv], "key_padding")  # (B, 1, 1, Lk) broadcast


def _closure(fn: Callable[..., Any]) -> dict[str, Any]:
    code, cells = getattr(fn, "__code__", None), getattr(fn, "__closure__", None)
    if code is None or cells is None:
        return {}
    return dict(zip(code.co_freevars, (c.cell_contents for c in cells), strict=True))


@functools.cache
def _templates() -> tuple[Any, Any, Any, bool]:
    """transformers' causal and bidirectional functions, the code of its and-combinator and
    of its sliding overlay, and whether its sliding window (w) is attnlab's sliding_window(w-1)
    & causal on a small grid (checked once; when not, sliding windows are not recognised)."""
    from transformers import masking_utils as mu

    w, n = 3, 9
    b, h, q, kv = (torch.arange(1).view(-1, 1, 1, 1), torch.arange(1).view(1, -1, 1, 1),
                   torch.arange(n).view(1, 1, -1, 1), torch.arange(n).view(1, 1, 1, -1))
    window_fn: Any = mu.sliding_window_causal_mask_function(w)  # typed for ints, called on tensors
    causal_fn: Any = mu.causal_mask_function
    ours = materialize(sliding_window(w - 1, 0), n, n)  # (1, 1, n, n)
    agree = bool((window_fn(b, h, q, kv).expand(1, 1, n, n) == ours).all())
    agree &= bool((causal_fn(b, h, q, kv) == materialize(causal(), n, n)).all())
    codes = (mu.and_masks(mu.causal_mask_function).__code__, mu.sliding_window_overlay(w).__code__)
    return mu, codes[0], codes[1], agree


def recognise(mask_function: Callable[..., Any], local_size: int | None) -> Mask | str | None:
    """attnlab's form of a transformers mask_function in absolute positions: a causal or
    sliding-window Mask, None for bidirectional (every key), or "unknown"."""
    mu, and_code, overlay_code, agree = _templates()
    if mask_function is mu.causal_mask_function:
        return causal()
    if mask_function is mu.bidirectional_mask_function:
        return None
    if not agree or local_size is None or getattr(mask_function, "__code__", None) is not and_code:
        return "unknown"
    parts = _closure(mask_function).get("mask_functions")
    if not (isinstance(parts, tuple) and len(parts) == 2 and parts[1] is mu.causal_mask_function):
        return "unknown"
    if getattr(parts[0], "__code__", None) is not overlay_code:
        return "unknown"
    w = _closure(parts[0]).get("sliding_window")
    if isinstance(w, bool) or not isinstance(w, int) or w != local_size or w < 1:
        return "unknown"
    return sliding_window(w - 1, 0) & causal()


def attnlab_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int | Tensor = 0,
                 kv_offset: int | Tensor = 0, mask_function: Callable[..., Any] | None = None,
                 attention_mask: Tensor | None = None, local_size: int | None = None,
                 use_vmap: bool = False, device: torch.device | str = "cpu",
                 **kwargs: Any) -> BridgeMask:
    """``AttentionMaskInterface`` entry for "attnlab" (the signature of masking_utils.sdpa_mask)."""
    from transformers import masking_utils as mu

    qo, ko = int(q_offset), int(kv_offset)  # StaticLayer gives 0-d tensors
    fn = mu.causal_mask_function if mask_function is None else mask_function
    keep = mu.prepare_padding_mask(attention_mask, kv_length, ko)  # (B, >= ko + Lk) bool or None
    if use_vmap:  # transformers' overlays that need vmap: its own dense mask
        dense = mu.sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length,
                             q_offset=qo, kv_offset=ko, mask_function=fn, attention_mask=attention_mask,
                             allow_is_causal_skip=False, use_vmap=True, device=device)
        return BridgeMask(dense, qo, ko, q_length, kv_length)  # (B, 1, Lq, Lk) bool
    base = recognise(fn, local_size)
    if isinstance(base, str):  # an index-based function: evaluate it as a predicate
        base = as_mask(lambda b, h, q, kv: fn(b, h, q, kv), getattr(fn, "__name__", "hf_mask"))
    pad = None if keep is None else padding_as_mask(keep[:, : ko + kv_length].to(torch.bool))
    full = base if pad is None else (pad if base is None else base & pad)
    return BridgeMask(to_call(full, qo, ko, q_length, kv_length), qo, ko, q_length, kv_length)


def to_call(mask: Mask | None, q_offset: int, kv_offset: int, q_length: int, kv_length: int) -> Mask | None:
    """A mask over absolute positions seen from a call whose queries and keys start at the
    offsets (attnlab's :func:`shifted`; intervals stay intervals)."""
    if mask is None or (q_offset == 0 and kv_offset == 0):
        return mask
    return shifted(mask, q_offset, kv_offset, q_offset + q_length, kv_offset + kv_length)


def tensor_mask(mask: Tensor, q_length: int, kv_length: int) -> Tensor:
    """A 4-D mask tensor given to the attention function (a user's own 4-D mask, or another
    mask interface's) as attnlab reads masks: bool True = may attend stays; an additive float
    mask stays (entries <= -65504, HF's finfo.min included, mean masked); keys beyond the call's
    ``kv_length`` (static caches) are cut. The one conversion of dense masks at this boundary."""
    if mask.ndim != 4 or mask.shape[-2] not in (1, q_length) or mask.shape[-1] < kv_length:
        raise ValueError(f"attention_mask: expected (B, 1|H, {q_length}, >= {kv_length}) bool or "
                         f"additive float, got shape {tuple(mask.shape)}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise ValueError(f"attention_mask: expected a bool (True = attend) or additive float 4-D "
                         f"mask, got dtype {mask.dtype}")
    return mask[..., :kv_length]  # (B, 1|H, Lq, Lk)
