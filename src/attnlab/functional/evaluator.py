"""Evaluate one call's mask_mod, dense mask, additive bias and score_mod on index tensors.

Backends that never build the (Lq, Lk) score matrix (the tiled kernel, weights recomputed from
an lse) apply the mask and score changes to a piece of it: a tile, a few rows. The indices are
broadcastable tensors of any rank, the way FlexAttention calls mask_mods and score_mods, so the
built-in vectorised mods work unchanged. Indices past the lengths (padding rows/keys of a tile)
are clamped before a mod sees them and padding keys are masked out explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnlab.functional.attention import ScoreMod
from attnlab.functional.masks import Mask


def _pick(size: int, i: Tensor) -> Tensor:
    """Index a (B|1) / (H|1) axis: a broadcast axis always reads entry 0."""
    return i if size > 1 else i.new_zeros((1,) * i.ndim)


@dataclass
class Evaluator:
    batch: int
    heads: int
    q_len: int
    kv_len: int
    mask: Mask | None = None
    dense: Tensor | None = None  # bool (B|1, H|1, Lq, Lk), True = may attend
    bias: Tensor | None = None  # float (B|1, H|1, Lq, Lk), added to the scores
    score_mod: ScoreMod | None = None

    @property
    def modifies(self) -> bool:
        return self.score_mod is not None or self.bias is not None

    @property
    def masks(self) -> bool:
        return self.mask is not None or self.dense is not None

    def allowed(self, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        """Bool, broadcastable to the scores: mask_mod & dense mask & (kv < Lk).

        Indices are clamped before the mask sees them (a padding row or key never indexes past
        a segment-id table); padding keys are then masked out explicitly."""
        qc, kc = q.clamp(max=self.q_len - 1), kv.clamp(max=self.kv_len - 1)
        ok = kv < self.kv_len
        if self.mask is not None:
            m = self.mask.evaluate(b, h, qc, kc, self.q_len, self.kv_len)
            if not isinstance(m, Tensor) or m.dtype != torch.bool:
                raise TypeError(f"mask {self.mask.name}: expected the mask_mod to return a bool tensor")
            ok = ok & m
        if self.dense is not None:
            d = self.dense
            ok = ok & d[_pick(d.shape[0], b), _pick(d.shape[1], h), qc, kc]
        return ok

    def modify(self, scores: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        """Additive bias, then score_mod (the order of the eager reference)."""
        qc, kc = q.clamp(max=self.q_len - 1), kv.clamp(max=self.kv_len - 1)
        if self.bias is not None:
            t = self.bias
            scores = scores + t[_pick(t.shape[0], b), _pick(t.shape[1], h), qc, kc].to(scores.dtype)
        if self.score_mod is not None:
            out = self.score_mod(scores, b, h, qc, kc)
            if not isinstance(out, Tensor) or out.shape != scores.shape:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(
                    f"score_mod: expected it to return scores of shape {tuple(scores.shape)}, got {got}")
            scores = out
        return scores

    def captures_grad(self) -> bool:
        """Does the bias or score_mod carry tensors that want gradients (e.g. a relative
        position table)? Probed once on a single score."""
        if self.bias is not None and self.bias.requires_grad:
            return True
        if self.score_mod is None:
            return False
        z = torch.zeros(1, 1, 1, 1, 1)
        with torch.enable_grad():
            out = self.score_mod(z, z.long(), z.long(), z.long(), z.long())
        return isinstance(out, Tensor) and out.requires_grad
