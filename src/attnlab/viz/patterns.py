"""Name the common attention patterns of one head (the tutorials' "Common Attention Patterns").

For a weights matrix (Lq, Lk) every score lies in [0, 1]; higher means more of that pattern:

- ``self``      mean weight on the diagonal (each token attends to itself).
- ``previous``  mean weight on the key just before the query (previous-token heads).
- ``next``      mean weight on the key just after the query.
- ``sink``      the largest column mean: every query attends one key ("column" pattern; a
                first-token sink when ``column == 0``). The column is reported.
- ``local``     locality ``1 - D / D_uniform`` (D: mean attention distance ``sum_j w_ij |i-j|``;
                D_uniform: the same for uniform weights over the keys the query could attend), times
                ``1 - max(self, previous, next)`` so that a single diagonal is not "local".
- ``broad``     mean normalised entropy ``H(w_i) / log(#keys the query could attend)``, times
                ``(1 - locality)^2`` and ``1 - mean_i max_j w_ij``: spread out, no focus.

The keys a query could attend (the baseline of locality and entropy) come from ``mask`` when
given, else are causal when every weight above the diagonal is zero, else all keys. Rows whose
weights are all zero (fully masked) are ignored. When Lq != Lk, query i sits at key position
``i + offset`` with ``offset = Lk - Lq`` by default (queries are the newest positions, as when
decoding with a KV cache); pass ``offset=0`` for top-left alignment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from attnlab.viz.inputs import as_bool_mask, as_stack, as_weights

LABELS = ("self", "previous", "next", "sink", "local", "broad")
# Below this top score no pattern describes the head well (e.g. content-based heads).
MIN_SCORE = 0.35
# Rows must sum to 1 (or 0 when fully masked) within this tolerance: float16/bfloat16 drift.
ROW_SUM_TOL = 2e-2


@dataclass(frozen=True)
class PatternScore:
    label: str
    score: float
    column: int | None = None  # the key column, for "sink"


@dataclass(frozen=True)
class PatternReport:
    """Scores of every pattern, best first, plus the raw statistics behind them."""

    scores: tuple[PatternScore, ...]
    mean_distance: float  # mean over rows of sum_j w_ij |j - (i + offset)|, in tokens
    locality: float  # 1 - mean_distance / uniform distance, clipped to [0, 1]
    entropy: float  # mean normalised row entropy in [0, 1]
    sink_column: int
    offset: int

    @property
    def top(self) -> PatternScore:
        return self.scores[0]

    @property
    def label(self) -> str:
        """The best label, or ``"mixed"`` when no score reaches :data:`MIN_SCORE`."""
        return self.top.label if self.top.score >= MIN_SCORE else "mixed"

    def score(self, label: str) -> float:
        for s in self.scores:
            if s.label == label:
                return s.score
        raise ValueError(f"label: expected one of {LABELS}, got {label!r}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "scores": [
                {"label": s.label, "score": s.score}
                | ({"column": s.column} if s.column is not None else {})
                for s in self.scores
            ],
            "mean_distance": self.mean_distance,
            "locality": self.locality,
            "entropy": self.entropy,
            "sink_column": self.sink_column,
            "offset": self.offset,
        }


def _check_rows(w: np.ndarray, name: str) -> np.ndarray:
    """Rows as probability vectors; returns the boolean index of rows that are not all zero."""
    sums = w.sum(axis=-1)  # (Lq,)
    live = sums > 0.5
    bad = (live & (np.abs(sums - 1.0) > ROW_SUM_TOL)) | (~live & (sums > ROW_SUM_TOL))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{name}: expected post-softmax weights whose rows sum to 1 (or 0 when fully "
            f"masked), got row {i} summing to {sums[i]:.4g}"
        )
    return live


def _allowed(w: np.ndarray, centre: np.ndarray, mask: np.ndarray | None,
             live: np.ndarray) -> np.ndarray:
    """Keys each live row could attend: ``mask``; else causal when nothing lies above the
    diagonal; else all keys. This is the baseline for locality and entropy, so that a
    sliding-window head counts as local even though its weights outside the window are 0."""
    lk = w.shape[1]
    if mask is not None:
        return mask[live]
    causal = np.arange(lk)[None, :] <= centre[:, None]  # (R, Lk)
    if lk > 1 and not (w * ~causal).any():
        return causal
    return np.ones_like(w, dtype=bool)


def _spread(w: np.ndarray, centre: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Per-row mean distance (R,), locality in [0, 1] and normalised entropy of rows ``w`` (R, Lk)
    centred at ``centre`` (R,), each against the keys ``allowed`` (R, Lk) that row could attend."""
    lk = w.shape[-1]
    dist = np.abs(np.arange(lk)[None, :] - centre[:, None])  # (R, Lk)
    d_rows = (w * dist).sum(axis=-1)  # (R,) mean attention distance per row
    n_allowed = allowed.sum(axis=-1)  # (R,)
    d_uniform = (dist * allowed).sum(axis=-1) / n_allowed  # (R,)
    # Ratio of sums, not mean of ratios: rows that can see few keys (the first rows of a causal
    # head) have little room to be non-local and should not dominate.
    room = float(d_uniform.sum())
    locality = float(np.clip(1.0 - d_rows.sum() / room, 0.0, 1.0)) if room > 0 else 1.0

    multi = n_allowed > 1
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(w > 0, w * np.log(np.where(w > 0, w, 1.0)), 0.0)  # (R, Lk)
    ent = -plogp.sum(axis=-1)  # (R,)
    entropy = float((ent[multi] / np.log(n_allowed[multi])).mean()) if multi.any() else 0.0
    return d_rows, locality, entropy


def classify_pattern(weights: Any, *, offset: int | None = None,
                     mask: Any = None) -> PatternReport:
    """Score the positional patterns of one attention matrix ``weights`` (Lq, Lk).

    ``mask`` (bool (Lq, Lk), True = may attend) sets the keys each query could attend, the
    baseline for locality and entropy; by default it is causal when every weight above the
    (offset) diagonal is zero, else all keys.
    """
    w = as_weights("weights", weights, 2, nonnegative=True)  # (Lq, Lk)
    w = np.clip(w, 0.0, None)
    lq, lk = w.shape
    off = lk - lq if offset is None else int(offset)
    if mask is not None:
        mask = as_bool_mask("mask", mask)
        if mask.shape != w.shape:
            raise ValueError(f"mask: expected shape {w.shape} like weights, got {mask.shape}")
    live = _check_rows(w, "weights")
    if not live.any():
        raise ValueError("weights: expected at least one row with weight, got every row all zero")
    w = w[live] / w[live].sum(axis=-1, keepdims=True)  # (R, Lk) renormalised live rows
    centre = np.arange(lq)[live] + off  # (R,) query position in key coordinates
    rows = np.arange(len(centre))

    def diag_mean(shift: int) -> float:
        j = centre + shift  # (R,)
        ok = (j >= 0) & (j < lk)
        return float(w[rows[ok], j[ok]].mean()) if ok.any() else 0.0

    self_s, prev_s, next_s = diag_mean(0), diag_mean(-1), diag_mean(1)
    col = w.mean(axis=0)  # (Lk,) mean weight each key receives
    sink_col = int(np.argmax(col))
    sink_s = float(col[sink_col])

    d_rows, locality, entropy = _spread(w, centre, _allowed(w, centre, mask, live))

    peak = max(self_s, prev_s, next_s)
    local_s = locality * (1.0 - peak) ** 0.5
    # A sharp row (a content head's one key, a sink, a diagonal) is not broad even when its
    # remaining mass makes the entropy high: discount by the mean largest weight per row.
    sharp = float(w.max(axis=-1).mean())
    broad_s = entropy * (1.0 - locality) ** 2 * (1.0 - sharp)
    scores = [
        PatternScore("self", self_s),
        PatternScore("previous", prev_s),
        PatternScore("next", next_s),
        PatternScore("sink", sink_s, sink_col),
        PatternScore("local", local_s),
        PatternScore("broad", broad_s),
    ]
    # Stable sort: ties keep the order above (e.g. for a 1x1 matrix, "self" wins).
    scores.sort(key=lambda s: -s.score)
    return PatternReport(
        scores=tuple(scores),
        mean_distance=float(d_rows.mean()),
        locality=locality,
        entropy=entropy,
        sink_column=sink_col,
        offset=off,
    )


def classify_heads(weights: Any, *, offset: int | None = None) -> list[list[PatternReport]]:
    """:func:`classify_pattern` for every head of ``weights`` (layers, heads, Lq, Lk)."""
    w = as_stack("weights", weights)  # (L, H, Lq, Lk)
    return [[classify_pattern(w[li, hi], offset=offset) for hi in range(w.shape[1])]
            for li in range(w.shape[0])]
