"""One mask language: ``mask_mod(b, h, q_idx, kv_idx) -> bool``, True = may attend.

A :class:`Mask` wraps such a predicate. It is evaluated on broadcastable index tensors
(``b: (B,1,1,1)``, ``h: (1,H,1,1)``, ``q_idx: (1,1,Lq,1)``, ``kv_idx: (1,1,1,Lk)``), the way
FlexAttention evaluates its mask_mods, so the built-ins are vectorised. Masks compose with
``&``, ``|`` and ``~``.

Some masks depend on the lengths: bottom-right causal alignment needs ``Lk - Lq``. A Mask
therefore carries a function of ``(b, h, q_idx, kv_idx, q_len, kv_len)``; plain 4-argument
callables are accepted everywhere and wrapped.

Alignment when Lq != Lk (the two conventions PyTorch names ``causal_upper_left`` and
``causal_lower_right``):

- ``top-left``: query i sees keys j <= i. With Lq < Lk the last keys are never seen.
- ``bottom-right``: query i sees keys j <= i + (Lk - Lq), so the last query sees every key.
  This is the right choice for decoding with a KV cache, where the queries are the newest
  Lq positions of a sequence whose Lk keys include the past.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from attnlab.functional.checks import as_index_tensor, expect_nonneg_int

MaskFn = Callable[[Tensor, Tensor, Tensor, Tensor, int, int], Tensor]
Align = Literal["top-left", "bottom-right"]


@dataclass(frozen=True)
class Mask:
    """A composable attention mask. Call it like a mask_mod: ``mask(b, h, q_idx, kv_idx)``.

    ``kind`` and ``params`` describe the built-ins so that backends can recognise them
    (e.g. a pure causal mask becomes SDPA's ``is_causal``) or derive block maps without
    evaluating every (q, kv) pair; combinations have kind "and" / "or" / "not".
    """

    fn: MaskFn
    name: str
    kind: str = "custom"
    params: dict[str, Any] = field(default_factory=dict)
    parts: tuple[Mask, ...] = ()

    def evaluate(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor,
                 q_len: int, kv_len: int) -> Tensor:
        return self.fn(b, h, q_idx, kv_idx, q_len, kv_len)

    def __call__(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        # As a bare mask_mod, lengths are unknown: length-dependent masks need materialize().
        if self.params.get("needs_lengths"):
            raise ValueError(
                f"mask {self.name}: depends on (q_len, kv_len); use "
                f"materialize(mask, q_len, kv_len) or mask.evaluate(...)"
            )
        return self.fn(b, h, q_idx, kv_idx, -1, -1)

    def __and__(self, other: object) -> Mask:
        o = as_mask(other, "other")
        return Mask(lambda *a: self.fn(*a) & o.fn(*a), f"({self.name} & {o.name})", "and",
                    {"needs_lengths": _needs(self, o)}, (self, o))

    def __or__(self, other: object) -> Mask:
        o = as_mask(other, "other")
        return Mask(lambda *a: self.fn(*a) | o.fn(*a), f"({self.name} | {o.name})", "or",
                    {"needs_lengths": _needs(self, o)}, (self, o))

    def __invert__(self) -> Mask:
        return Mask(lambda *a: ~self.fn(*a), f"~{self.name}", "not",
                    {"needs_lengths": _needs(self)}, (self,))

    def __repr__(self) -> str:
        return f"Mask({self.name})"


def _needs(*masks: Mask) -> bool:
    return any(m.params.get("needs_lengths", False) for m in masks)


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


def _check_align(align: str) -> None:
    if align not in ("top-left", "bottom-right"):
        raise ValueError(f"align: expected 'top-left' or 'bottom-right', got {align!r}")


def _offset(align: str, q_len: int, kv_len: int) -> int:
    """Shift added to q_idx so that bottom-right alignment lines the last query up with the last key."""
    return kv_len - q_len if align == "bottom-right" else 0


def causal(align: Align = "top-left") -> Mask:
    """Query i may attend key j when j <= i (top-left) or j <= i + Lk - Lq (bottom-right)."""
    _check_align(align)
    br = align == "bottom-right"

    def fn(b, h, q, kv, lq, lk):
        return kv <= q + _offset(align, lq, lk)

    return Mask(fn, f"causal[{align}]", "causal", {"align": align, "needs_lengths": br})


def sliding_window(left: int, right: int = 0, align: Align = "top-left") -> Mask:
    """Query i may attend keys j with i - left <= j <= i + right (both bounds inclusive).

    ``sliding_window(W, 0)`` is causal local attention over the W previous tokens plus the
    token itself (W + 1 keys); ``sliding_window(D, D)`` is Luong's local-m window [t-D, t+D].
    ``align`` shifts the diagonal as in :func:`causal`.
    """
    expect_nonneg_int("left", left)
    expect_nonneg_int("right", right)
    _check_align(align)
    br = align == "bottom-right"

    def fn(b, h, q, kv, lq, lk):
        centre = q + _offset(align, lq, lk)
        return (kv >= centre - left) & (kv <= centre + right)

    return Mask(fn, f"window[-{left},+{right}]", "sliding_window",
                {"left": left, "right": right, "align": align, "needs_lengths": br})


def padding(q_lengths: object = None, k_lengths: object = None) -> Mask:
    """Per-batch valid lengths: key j is visible when j < k_lengths[b]; query rows
    i >= q_lengths[b] see nothing (their context is exact zeros)."""
    if q_lengths is None and k_lengths is None:
        raise ValueError("padding: expected q_lengths or k_lengths, got neither")
    ql = None if q_lengths is None else as_index_tensor("q_lengths", q_lengths)
    kl = None if k_lengths is None else as_index_tensor("k_lengths", k_lengths)
    for nm, t in (("q_lengths", ql), ("k_lengths", kl)):
        if t is not None and bool((t < 0).any()):
            raise ValueError(f"{nm}: expected lengths >= 0, got {t.tolist()}")

    def fn(b, h, q, kv, lq, lk):
        ok = torch.ones((), dtype=torch.bool, device=q.device)
        if kl is not None:
            _check_batch("k_lengths", kl, b)
            ok = ok & (kv < kl.to(kv.device)[b])
        if ql is not None:
            _check_batch("q_lengths", ql, b)
            ok = ok & (q < ql.to(q.device)[b])
        return ok

    return Mask(fn, "padding", "padding", {"q_lengths": ql, "k_lengths": kl})


def _check_batch(name: str, t: Tensor, b: Tensor) -> None:
    need = int(b.max()) + 1 if b.numel() else 0
    if t.shape[0] < need:
        raise ValueError(f"{name}: expected one entry per batch element ({need}), got {t.shape[0]}")


def prefix_lm(prefix_len: int) -> Mask:
    """Prefix LM (T5/UniLM): every query sees the first ``prefix_len`` keys; after that, causal."""
    expect_nonneg_int("prefix_len", prefix_len)
    return Mask(lambda b, h, q, kv, lq, lk: (kv < prefix_len) | (kv <= q),
                f"prefix_lm[{prefix_len}]", "prefix_lm", {"prefix_len": prefix_len})


def document(segment_ids: object, kv_segment_ids: object = None) -> Mask:
    """Packed sequences: query i sees key j only inside the same document.

    ``segment_ids``: (L,) or (B, L) integer ids per position; ``kv_segment_ids`` likewise for
    the keys when they differ from the queries (cross attention over packed batches).
    Combine with ``causal()`` for packed causal language modelling.
    """
    qs = as_index_tensor("segment_ids", segment_ids, ndim=(1, 2))
    ks = qs if kv_segment_ids is None else as_index_tensor("kv_segment_ids", kv_segment_ids,
                                                           ndim=(1, 2))
    q2 = qs if qs.ndim == 2 else qs.unsqueeze(0)  # (B or 1, Lq)
    k2 = ks if ks.ndim == 2 else ks.unsqueeze(0)  # (B or 1, Lk)

    def fn(b, h, q, kv, lq, lk):
        if lq >= 0 and (q2.shape[1] != lq or k2.shape[1] != lk):
            raise ValueError(
                f"segment_ids: expected {lq} query and {lk} key positions, "
                f"got {q2.shape[1]} and {k2.shape[1]}"
            )
        bq = b if q2.shape[0] > 1 else torch.zeros_like(b)
        bk = b if k2.shape[0] > 1 else torch.zeros_like(b)
        return q2.to(q.device)[bq, q] == k2.to(kv.device)[bk, kv]

    return Mask(fn, "document", "document", {"q_segments": q2, "kv_segments": k2})


def full() -> Mask:
    """Every query may attend every key."""
    return Mask(lambda b, h, q, kv, lq, lk: torch.ones((), dtype=torch.bool, device=q.device)
                .expand(torch.broadcast_shapes(q.shape, kv.shape)), "full", "full")


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
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{nm}: expected a positive int, got {v!r}")
    b, h, q, kv = index_grids(batch, heads, q_len, kv_len, device)
    out = m.evaluate(b, h, q, kv, q_len, kv_len)
    if not isinstance(out, Tensor) or out.dtype != torch.bool:
        got = out.dtype if isinstance(out, Tensor) else type(out).__name__
        raise TypeError(f"mask {m.name}: expected the mask_mod to return a bool tensor, got {got}")
    return out.expand(batch, heads, q_len, kv_len)




# Sparse patterns live in their own file; re-exported so that ``attnlab.masks.longformer`` works.
# Imported last: sparse_masks builds on the Mask class defined above.
from attnlab.functional import sparse_masks as _sparse  # noqa: E402

bigbird = _sparse.bigbird
block_sparse = _sparse.block_sparse
dilated_sliding_window = _sparse.dilated_sliding_window
longformer = _sparse.longformer
sparse_transformer_fixed = _sparse.sparse_transformer_fixed
sparse_transformer_strided = _sparse.sparse_transformer_strided
