"""The Mask class, its typed structure description (:class:`Pattern`) and the combinators.

A :class:`Mask` is a predicate ``fn(b, h, q_idx, kv_idx, q_len, kv_len) -> bool`` plus a
:class:`Pattern`: what a backend may know about the mask's structure without evaluating it
pair by pair. Each built-in pattern family subclasses Pattern in its own module (band.py,
batch.py, dilated.py, factorized.py, longformer.py, block_layout.py, intervals.py) and answers
only the questions it can answer exactly:

- ``intervals``: the allowed keys of every query row as one interval lo..hi (O(Lq) memory;
  gives block maps and allowed-pair counts in closed form);
- ``tiles``: which (query block, key block) tiles are empty / full / partial, from tile
  corners, for patterns that are not intervals;
- ``span``: about how many keys a row attends (the tiled backend sizes its tiles by it);
- ``layout_block``: the block size tiles should align with (block layouts);
- ``parts``: a decomposition into disjoint pieces that are intervals after a reordering;
- ``sdpa_form``: whether torch SDPA can take the mask without materialising it.

The base class answers "unknown" to everything (a custom mask_mod): backends then evaluate the
predicate, which is always correct, only slower. A new pattern is one module: its builder,
its Pattern subclass and the answers it knows.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import Tensor

from attnlab.arguments import expect_positive_int

if TYPE_CHECKING:
    from attnlab.functional.masks.grid import TileClasses, TileGrid
    from attnlab.functional.masks.parts import Part

MaskFn = Callable[[Tensor, Tensor, Tensor, Tensor, int, int], Tensor]
Align = Literal["top-left", "bottom-right"]
SdpaForm = Literal["causal", "full"]
Classify = Callable[["Mask", "TileGrid", int, int], "TileClasses"]

CUSTOM_SPAN = 256  # keys per row assumed for a mask nothing is known about


def check_align(align: str) -> None:
    if align not in ("top-left", "bottom-right"):
        raise ValueError(f"align: expected 'top-left' or 'bottom-right', got {align!r}")


def align_offset(align: str, q_len: int, kv_len: int) -> int:
    """Shift added to q_idx so that bottom-right alignment lines the last query up with the last key."""
    return kv_len - q_len if align == "bottom-right" else 0


class Pattern:
    """What is known about a mask's structure: nothing, for this base class (a custom
    mask_mod). Subclasses are frozen dataclasses holding the pattern's typed parameters."""

    kind: ClassVar[str] = "custom"  # a label for repr and pictures; backends never compare it

    @property
    def needs_lengths(self) -> bool:
        """Does the predicate depend on (q_len, kv_len)? Then a bare 4-argument call is refused."""
        return False

    def intervals(self, q_len: int, kv_len: int) -> tuple[Tensor, Tensor] | None:
        """Inclusive key bounds (lo, hi) per query row, each (Bm, Lq) int64 with Bm 1 or the
        batch size, not yet clipped to [0, Lk - 1]; None when rows are not intervals."""
        return None

    def tiles(self, mask: Mask, g: TileGrid, i0: int, i1: int, classify: Classify) -> TileClasses | None:
        """(nonempty, full, exact) for query blocks i0..i1-1 against every key block, or None
        (then the predicate is evaluated). ``classify`` classifies another mask (combinators)."""
        return None

    def span(self, kv_len: int) -> int:
        return CUSTOM_SPAN

    @property
    def layout_block(self) -> int | None:
        return None

    def parts(self, q_len: int, kv_len: int, *, views: bool) -> list[Part] | None:
        """Disjoint pieces whose union is the mask (softmax merges them by lse), or None."""
        return None

    def sdpa_form(self, q_len: int, kv_len: int) -> SdpaForm | None:
        """"causal": SDPA's is_causal; "full": no mask at all; None: SDPA needs it materialised."""
        return None


CUSTOM = Pattern()


@dataclass(frozen=True)
class Mask:
    """A composable attention mask. Call it like a mask_mod: ``mask(b, h, q_idx, kv_idx)``.

    ``pattern`` describes the built-ins (see :class:`Pattern`) so that backends can recognise
    them (a pure causal mask becomes SDPA's ``is_causal``) or derive block maps without
    evaluating every (q, kv) pair.
    """

    fn: MaskFn
    name: str
    pattern: Pattern = field(default=CUSTOM)

    @property
    def kind(self) -> str:
        """The pattern's label ("causal", "and", "custom", ...), for display."""
        return self.pattern.kind

    def evaluate(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor,
                 q_len: int, kv_len: int) -> Tensor:
        return self.fn(b, h, q_idx, kv_idx, q_len, kv_len)

    def __call__(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        # As a bare mask_mod, lengths are unknown: length-dependent masks need materialize().
        if self.pattern.needs_lengths:
            raise ValueError(
                f"mask {self.name}: depends on (q_len, kv_len); use "
                f"materialize(mask, q_len, kv_len) or mask.evaluate(...)"
            )
        return self.fn(b, h, q_idx, kv_idx, -1, -1)

    def __and__(self, other: object) -> Mask:
        o = as_mask(other, "other")
        return Mask(lambda *a: self.fn(*a) & o.fn(*a), f"({self.name} & {o.name})", And(self, o))

    def __or__(self, other: object) -> Mask:
        o = as_mask(other, "other")
        return Mask(lambda *a: self.fn(*a) | o.fn(*a), f"({self.name} | {o.name})", Or(self, o))

    def __invert__(self) -> Mask:
        return Mask(lambda *a: ~self.fn(*a), f"~{self.name}", Not(self))

    def __repr__(self) -> str:
        return f"Mask({self.name})"


# Combinators follow from set algebra: for A & B, nonempty ⊆ ne(A) ∧ ne(B) and full = full(A) ∧
# full(B); for A | B, nonempty = ne(A) ∨ ne(B) and full ⊇ full(A) ∨ full(B); for ~A, the roles
# of empty and full swap. Soundness (see backends/tiled/blockmap.py): "nonempty" may
# over-approximate, "full" may under-approximate.
@dataclass(frozen=True, eq=False)
class And(Pattern):
    a: Mask
    b: Mask
    kind: ClassVar[str] = "and"

    @property
    def needs_lengths(self) -> bool:
        return self.a.pattern.needs_lengths or self.b.pattern.needs_lengths

    def intervals(self, q_len: int, kv_len: int) -> tuple[Tensor, Tensor] | None:
        ia, ib = self.a.pattern.intervals(q_len, kv_len), self.b.pattern.intervals(q_len, kv_len)
        if ia is None or ib is None:
            return None
        return torch.maximum(ia[0], ib[0]), torch.minimum(ia[1], ib[1])  # intersection of intervals

    def tiles(self, mask: Mask, g: TileGrid, i0: int, i1: int, classify: Classify) -> TileClasses:
        (na, fa, _), (nb, fb, _) = classify(self.a, g, i0, i1), classify(self.b, g, i0, i1)
        return na & nb, fa & fb, False

    def span(self, kv_len: int) -> int:
        return min(self.a.pattern.span(kv_len), self.b.pattern.span(kv_len))


@dataclass(frozen=True, eq=False)
class Or(Pattern):
    a: Mask
    b: Mask
    kind: ClassVar[str] = "or"

    @property
    def needs_lengths(self) -> bool:
        return self.a.pattern.needs_lengths or self.b.pattern.needs_lengths

    def tiles(self, mask: Mask, g: TileGrid, i0: int, i1: int, classify: Classify) -> TileClasses:
        (na, fa, _), (nb, fb, _) = classify(self.a, g, i0, i1), classify(self.b, g, i0, i1)
        return na | nb, fa | fb, False

    def span(self, kv_len: int) -> int:
        return max(self.a.pattern.span(kv_len), self.b.pattern.span(kv_len))


@dataclass(frozen=True, eq=False)
class Not(Pattern):
    a: Mask
    kind: ClassVar[str] = "not"

    @property
    def needs_lengths(self) -> bool:
        return self.a.pattern.needs_lengths

    def tiles(self, mask: Mask, g: TileGrid, i0: int, i1: int, classify: Classify) -> TileClasses:
        n, f, e = classify(self.a, g, i0, i1)
        return ~f, ~n, e


def as_mask(mask_mod: object, name: str = "mask") -> Mask:
    """Wrap a plain ``mask_mod(b, h, q_idx, kv_idx)`` callable as a :class:`Mask`."""
    if isinstance(mask_mod, Mask):
        return mask_mod
    if not callable(mask_mod):
        raise TypeError(f"{name}: expected a Mask or a mask_mod callable, got {type(mask_mod).__name__}")
    try:
        n_params = len(inspect.signature(mask_mod).parameters)
    except (TypeError, ValueError):  # builtins without a signature: trust the caller
        n_params = 4
    if n_params != 4:
        raise TypeError(
            f"{name}: expected a mask_mod(b, h, q_idx, kv_idx) with 4 parameters, "
            f"got a callable with {n_params}"
        )
    label = getattr(mask_mod, "__name__", "mask_mod")
    return Mask(lambda b, h, q, kv, lq, lk: mask_mod(b, h, q, kv), label)


def index_grids(batch: int, heads: int, q_len: int, kv_len: int,
                device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Broadcastable index tensors b (B,1,1,1), h (1,H,1,1), q (1,1,Lq,1), kv (1,1,1,Lk)."""
    ar = lambda n: torch.arange(n, device=device)  # noqa: E731
    return (ar(batch).view(-1, 1, 1, 1), ar(heads).view(1, -1, 1, 1),
            ar(q_len).view(1, 1, -1, 1), ar(kv_len).view(1, 1, 1, -1))


def materialize(mask: object, q_len: int, kv_len: int, *, batch: int = 1, heads: int = 1,
                device: torch.device | str | None = None) -> Tensor:
    """Evaluate a mask_mod on every (b, h, q, kv): a dense bool tensor (B, H, Lq, Lk), True = attend.

    Memory is O(B·H·Lq·Lk): fine for pictures and tests, not for long sequences.
    """
    m = as_mask(mask)
    for nm, v in (("q_len", q_len), ("kv_len", kv_len), ("batch", batch), ("heads", heads)):
        expect_positive_int(nm, v)
    b, h, q, kv = index_grids(batch, heads, q_len, kv_len, device)
    out = m.evaluate(b, h, q, kv, q_len, kv_len)
    if not isinstance(out, Tensor) or out.dtype != torch.bool:
        got = out.dtype if isinstance(out, Tensor) else type(out).__name__
        raise TypeError(f"mask {m.name}: expected the mask_mod to return a bool tensor, got {got}")
    return out.expand(batch, heads, q_len, kv_len)
