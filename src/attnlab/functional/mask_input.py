"""Turn whatever the user passed as ``mask`` into one normal form.

Accepted (all with the same polarity, True / finite = may attend):
- ``None``;
- a :class:`~attnlab.functional.masks.Mask` or a plain ``mask_mod(b, h, q_idx, kv_idx)``;
- a bool tensor broadcastable to ``(B, H, Lq, Lk)``: True = may attend;
- a float tensor, added to the scores (ALiBi-style biases, HF-style additive masks).
  One meaning in every dtype: an entry <= ``MASKED_AT_OR_BELOW`` (-65504, the most negative
  finite float16; ``-inf``, HF's ``torch.finfo(dtype).min`` of any dtype and ``-1e9`` all
  qualify) marks a masked position, exactly like False in a bool mask, so a row masked
  everywhere gives zeros. Other entries are biases kept in float32 (float64 for float64
  inputs) and added to scores that every backend computes in at least float32. Without the
  threshold, finfo(float32).min would average every key for float32 inputs and turn into
  -inf (zeros) for float16/bfloat16 ones.
Integer tensors are refused: 0/1 masks are ambiguous between "keep" and "drop" conventions;
so is a float tensor of only 0s and 1s (``torch.tril(torch.ones(L, L))``), refused with the same
advice: added, it would mask nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnlab.functional.masks import Mask, as_mask, index_grids

# Additive entries at or below this mean "masked", whatever the dtype of the mask or of q.
# float16 cannot hold a finite value below it, so no reading of such a value as a bias could
# be the same in every dtype; HF fills masks with finfo(dtype).min, which is below it for
# float16, bfloat16, float32 and float64 alike.
MASKED_AT_OR_BELOW = torch.finfo(torch.float16).min  # -65504.0


def bias_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype additive biases are kept and added in: float64 for float64 inputs, else float32
    (half-precision inputs get float32 scores in the reference, as in SDPA's math path)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class NormalizedMask:
    mod: Mask | None = None  # predicate, evaluated lazily
    dense: Tensor | None = None  # bool, broadcastable to (B, H, Lq, Lk)
    bias: Tensor | None = None  # finite float32/64 (bias_dtype), broadcastable to (B, H, Lq, Lk)

    @property
    def empty(self) -> bool:
        return self.mod is None and self.dense is None and self.bias is None


def _check_shape(mask: Tensor, shape: tuple[int, int, int, int], given_ndim: int) -> Tensor:
    """Right-align ``mask`` against (B, H, Lq, Lk); each dim must equal the target or be 1."""
    if mask.ndim > 4:
        raise ValueError(f"mask: expected at most 4 dims (B, H, Lq, Lk), got shape {tuple(mask.shape)}")
    names = ("B", "H", "Lq", "Lk")
    padded = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))  # (B|1, H|1, Lq|1, Lk|1)
    for i, (got, want) in enumerate(zip(padded.shape, shape, strict=True)):
        # The key axis must be given in full: a length-1 key axis is almost always a bug.
        ok = got == want or (got == 1 and names[i] != "Lk")
        if not ok:
            expected = "(" + ", ".join(f"{n}={s}" for n, s in zip(names, shape, strict=True)) + ")"
            raise ValueError(
                f"mask: expected a shape broadcastable to {expected} (dims right-aligned, "
                f"each equal or 1, Lk in full), got {tuple(mask.shape)}"
            )
    return padded


def normalize_mask(mask: object, shape: tuple[int, int, int, int], *, dtype: torch.dtype,
                   device: torch.device) -> NormalizedMask:
    if mask is None:
        return NormalizedMask()
    if isinstance(mask, Tensor):
        if mask.device != device:
            raise ValueError(f"mask: expected device {device} (as q), got {mask.device}")
        if mask.dtype == torch.bool:
            return NormalizedMask(dense=_check_shape(mask, shape, mask.ndim))
        if mask.is_floating_point():
            m = _check_shape(mask, shape, mask.ndim)
            if bool(torch.isnan(m).any()) or bool((m == float("inf")).any()):
                raise ValueError("mask: an additive float mask may hold finite values or -inf, got NaN/+inf")
            if bool((m == 1).any()) and bool(((m == 0) | (m == 1)).all()):
                # torch.tril(torch.ones(L, L)) is a keep-mask in intent; added, it masks nothing
                raise ValueError(
                    "mask: a float mask is added to the scores (0 = keep, -inf = masked), got one "
                    "of only 0s and 1s, which would mask nothing; for a keep-mask pass "
                    "mask.bool() (True = may attend)")
            allowed = m > MASKED_AT_OR_BELOW  # (B|1, H|1, Lq|1, Lk)
            mf = m.to(bias_dtype(dtype))  # widened before the select: exact for every mask dtype
            bias = torch.where(allowed, mf, torch.zeros((), dtype=mf.dtype, device=mf.device))
            return NormalizedMask(dense=None if bool(allowed.all()) else allowed, bias=bias)
        raise TypeError(
            f"mask: expected a bool tensor (True = may attend), an additive float tensor or a "
            f"mask_mod, got a tensor of dtype {mask.dtype}; convert 0/1 masks with mask.bool()"
        )
    return NormalizedMask(mod=as_mask(mask, "mask"))


def allowed_dense(nm: NormalizedMask, shape: tuple[int, int, int, int],
                  device: torch.device) -> Tensor | None:
    """The combined bool mask (broadcastable to ``shape``), or None if everything is allowed."""
    B, H, Lq, Lk = shape
    out = nm.dense
    if nm.mod is not None:
        b, h, q, kv = index_grids(B, H, Lq, Lk, device)
        m = nm.mod.evaluate(b, h, q, kv, Lq, Lk)
        if not isinstance(m, Tensor) or m.dtype != torch.bool:
            raise TypeError(f"mask {nm.mod.name}: expected the mask_mod to return bool, got "
                            f"{m.dtype if isinstance(m, Tensor) else type(m).__name__}")
        out = m if out is None else (out & m)
    return out
