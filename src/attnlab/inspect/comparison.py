"""Two inputs, one focus token: which heads move their attention between candidate tokens?

The classic test of dynamic routing: in "The animal didn't cross the street because it was too
tired" the pronoun "it" refers to the animal; with "... too wide" it refers to the street. A
head that tracks the referent should move weight from "animal" to "street" between the two.

For every (layer, head) with the focus row ``a`` (text A) and ``b`` (text B):

- with two candidates (c1, c2): ``shift = (b[c2] − b[c1]) − (a[c2] − a[c1])``, the weight that
  moved from c1 towards c2 (positive) or back (negative); heads are ranked by ``|shift|``;
- with more candidates: ``moved = ½ Σ_c |b[c] − a[c]|`` (total variation over the
  candidates); heads are ranked by it. ``moved`` is reported in both cases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from attnlab.inspect.attention_cache import AttentionCache, capture, find_token
from attnlab.models.loading import LoadedModel
from attnlab.models.tokenizer import normalize_token


@dataclass(frozen=True)
class HeadShift:
    layer: int
    head: int | None  # None: mean over heads
    a: dict[str, float]  # candidate -> weight from the focus in text A
    b: dict[str, float]
    moved: float
    shift: float | None  # two candidates only

    @property
    def score(self) -> float:
        return abs(self.shift) if self.shift is not None else self.moved

    def toward(self, candidates: list[str]) -> str | None:
        if self.shift is None or self.shift == 0:
            return None
        return candidates[1] if self.shift > 0 else candidates[0]

    def to_dict(self, candidates: list[str]) -> dict[str, Any]:
        r = lambda x: round(x, 6)  # noqa: E731
        return {"layer": self.layer, "head": self.head, "a": {k: r(v) for k, v in self.a.items()},
                "b": {k: r(v) for k, v in self.b.items()}, "moved": r(self.moved),
                "shift": None if self.shift is None else r(self.shift), "toward": self.toward(candidates)}


@dataclass
class Comparison:
    text_a: str
    text_b: str
    focus: str
    candidates: list[str]
    focus_a: int
    focus_b: int
    pos_a: list[int]  # candidate positions in A
    pos_b: list[int]
    heads: list[HeadShift]  # ranked, best first
    layer_means: list[HeadShift]
    cache_a: AttentionCache = field(repr=False)
    cache_b: AttentionCache = field(repr=False)

    @property
    def best(self) -> HeadShift:
        return self.heads[0]

    def to_dict(self, top: int = 10) -> dict[str, Any]:
        return {"text_a": self.text_a, "text_b": self.text_b, "focus": self.focus,
                "candidates": self.candidates,
                "focus_positions": {"a": self.focus_a, "b": self.focus_b},
                "tokens": {"a": self.cache_a.tokens, "b": self.cache_b.tokens},
                "ranking": "abs(shift)" if len(self.candidates) == 2 else "moved",
                "heads": [h.to_dict(self.candidates) for h in self.heads[:top]],
                "layer_means": [h.to_dict(self.candidates) for h in self.layer_means]}


def _default_candidates(a: AttentionCache, b: AttentionCache, focus_a: int) -> list[str]:
    """Content tokens present in both texts (in A's order), without the focus."""
    in_b = {normalize_token(t) for t, s in zip(b.encoded.tokens, b.encoded.special, strict=True) if not s}
    out: list[str] = []
    for i, (t, s) in enumerate(zip(a.encoded.tokens, a.encoded.special, strict=True)):
        n = normalize_token(t)
        if not s and i != focus_a and n and n in in_b and n not in out and any(c.isalnum() for c in n):
            out.append(n)
    return out


def compare(lm: LoadedModel, text_a: str, text_b: str, focus: str, candidates: list[str] | None = None,
            *, truncate: bool = False) -> Comparison:
    """Rank heads by how far ``focus``'s attention moved between ``candidates`` from A to B."""
    if isinstance(candidates, str):  # list("animal") would be its letters
        raise TypeError(f"candidates: expected a list of tokens, e.g. ['animal', 'street'], got "
                        f"the string {candidates!r}")
    ca = capture(lm, lm.encode(text_a, truncate=truncate, name="text_a"), keep_hidden=False)
    cb = capture(lm, lm.encode(text_b, truncate=truncate, name="text_b"), keep_hidden=False)
    fa = find_token(ca.encoded, focus, name="focus (text A)")
    fb = find_token(cb.encoded, focus, name="focus (text B)")
    cands = list(candidates) if candidates else _default_candidates(ca, cb, fa)
    if not cands:
        raise ValueError("candidates: expected tokens present in both texts, found none; pass --candidates")
    if len(set(cands)) != len(cands):
        raise ValueError(f"candidates: expected distinct tokens, got {cands}")
    pa = [find_token(ca.encoded, c, name="candidates (text A)") for c in cands]
    pb = [find_token(cb.encoded, c, name="candidates (text B)") for c in cands]
    wa = ca.weights[:, :, fa][:, :, pa]  # (L, H, C)
    wb = cb.weights[:, :, fb][:, :, pb]  # (L, H, C)

    def shift_of(layer: int, head: int | None, xa, xb) -> HeadShift:
        da = {c: float(v) for c, v in zip(cands, xa, strict=True)}
        db = {c: float(v) for c, v in zip(cands, xb, strict=True)}
        moved = 0.5 * float((xb - xa).abs().sum())
        shift = None
        if len(cands) == 2:
            shift = float((xb[1] - xb[0]) - (xa[1] - xa[0]))
        return HeadShift(layer, head, da, db, moved, shift)

    heads = [shift_of(layer, h, wa[layer, h], wb[layer, h])
             for layer in range(ca.num_layers) for h in range(ca.num_heads)]
    heads.sort(key=lambda s: -s.score)
    means = [shift_of(layer, None, wa[layer].mean(0), wb[layer].mean(0)) for layer in range(ca.num_layers)]
    return Comparison(text_a, text_b, focus, cands, fa, fb, pa, pb, heads, means, ca, cb)
