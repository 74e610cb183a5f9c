"""One mask language: ``mask_mod(b, h, q_idx, kv_idx) -> bool``, True = may attend.

A :class:`Mask` wraps such a predicate. It is evaluated on broadcastable index tensors
(``b: (B,1,1,1)``, ``h: (1,H,1,1)``, ``q_idx: (1,1,Lq,1)``, ``kv_idx: (1,1,1,Lk)``), the way
FlexAttention evaluates its mask_mods, so the built-ins are vectorised. Masks compose with
``&``, ``|`` and ``~``.

Some masks depend on the lengths: bottom-right causal alignment needs ``Lk - Lq``. A Mask
therefore carries a function of ``(b, h, q_idx, kv_idx, q_len, kv_len)``; plain 4-argument
callables are accepted everywhere and wrapped.

Each built-in carries a typed :class:`Pattern` describing its structure for the backends (base.py
says what it answers). One module per pattern family:

- band.py: :func:`full`, :func:`causal`, :func:`sliding_window`, :func:`prefix_lm`;
- batch.py: :func:`padding`, :func:`document`;
- dilated.py: :func:`dilated_sliding_window` (Longformer's dilated window);
- longformer.py: :func:`longformer` (window + global tokens);
- factorized.py: :func:`sparse_transformer_strided`, :func:`sparse_transformer_fixed`;
- block_layout.py: :func:`block_sparse`, :func:`bigbird`;
- intervals.py: rows as key intervals (and :func:`interval_mask`);
- shift.py: :func:`shifted`, a block of a bigger mask in global positions (context parallelism).
"""

from attnlab.functional.masks.band import causal, full, prefix_lm, sliding_window
from attnlab.functional.masks.base import (
    Align,
    Mask,
    MaskFn,
    Pattern,
    align_offset,
    as_mask,
    check_align,
    index_grids,
    materialize,
)
from attnlab.functional.masks.batch import document, padding
from attnlab.functional.masks.block_layout import bigbird, block_sparse
from attnlab.functional.masks.dilated import dilated_sliding_window
from attnlab.functional.masks.factorized import sparse_transformer_fixed, sparse_transformer_strided
from attnlab.functional.masks.intervals import interval_mask
from attnlab.functional.masks.longformer import longformer
from attnlab.functional.masks.shift import shifted

__all__ = [
    "Align",
    "Mask",
    "MaskFn",
    "Pattern",
    "align_offset",
    "as_mask",
    "bigbird",
    "block_sparse",
    "causal",
    "check_align",
    "dilated_sliding_window",
    "document",
    "full",
    "index_grids",
    "interval_mask",
    "longformer",
    "materialize",
    "padding",
    "prefix_lm",
    "shifted",
    "sliding_window",
    "sparse_transformer_fixed",
    "sparse_transformer_strided",
]
