"""Luong attention: global (dot / general / concat) and local (local-m / local-p).

Luong, Pham, Manning 2015, "Effective Approaches to Attention-based Neural Machine
Translation". The decoder's current state h_t (not h_{t-1} as in Bahdanau) reads the source
states h̄_s:

    score(h_t, h̄_s) = h_tᵀ h̄_s | h_tᵀ W_a h̄_s | v_aᵀ tanh(W_a [h_t; h̄_s])      (eq. 8)
    a_t(s) = exp(score(h_t, h̄_s)) / Σ_s' exp(score(h_t, h̄_s'))                  (eq. 7)
    c_t = Σ_s a_t(s) h̄_s                                                          (§3.1)

Local attention (§3.2) only reads the window [p_t − D, p_t + D]:

- local-m: p_t = t, the monotonic guess; eq. 7 over the window.
- local-p: p_t = S · sigmoid(v_pᵀ tanh(W_p h_t))                                 (eq. 9)
           a_t(s) = align(h_t, h̄_s) · exp(−(s − p_t)² / (2σ²)),  σ = D/2       (eq. 10)
  where align is eq. 7 taken over the window and S is the source length. As in the paper
  the Gaussian multiplies the *normalised* weights, so a local-p row sums to at most 1; it
  is what makes p_t trainable (the window edge itself has no gradient).

Positions are 0-based (s = 0 .. S−1, t = 0, 1, ...). Every module takes the same call:
``forward(query (B, Lq, Dq), memory (B, Ls, Dk), lengths (B,), *, keys, allowed, positions)``
and returns an :class:`~attnlab.modules.bahdanau.Alignment`. Windows are applied as masks
over the full (B, Lq, Ls) score matrix: at NMT lengths (Ls ≲ 100) that is faster on a CPU
than gathering 2D+1 keys per row, and it gives weights on the source axis for free.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from attnlab.functional.checks import expect_nonneg_int, expect_positive_int
from attnlab.functional.masks import padding, sliding_window
from attnlab.functional.scores import dot
from attnlab.modules.bahdanau import (
    Alignment,
    additive_from_keys,
    align,
    check_inputs,
    finite_memory,
    index_grid,
    read,
    source_allowed,
    unpadded,
)
from attnlab.modules.hooks import HookPoint

ScoreName = Literal["dot", "general", "concat"]
SCORES: tuple[str, ...] = ("dot", "general", "concat")


class LuongScore(nn.Module):
    """The three content scores of eq. (8), with the key side precomputable per sentence.

    ``prepare(memory)`` returns what does not depend on t: h̄_s (dot), W_a h̄_s (general),
    the key half of W_a [h_t; h̄_s] (concat). ``forward(query, keys)`` -> (B, Lq, Ls).
    """

    def __init__(self, query_dim: int, key_dim: int, score: str = "general",
                 attn_dim: int | None = None) -> None:
        super().__init__()
        expect_positive_int("query_dim", query_dim)
        expect_positive_int("key_dim", key_dim)
        if score not in SCORES:
            raise ValueError(f"score: expected one of {', '.join(SCORES)}, got {score!r}")
        if score == "dot" and query_dim != key_dim:
            raise ValueError(
                f"score 'dot': expected query_dim == key_dim, got {query_dim} != {key_dim}")
        self.score = score
        if score == "general":
            # W_a (Dq, Dk) as in functional.scores.general: h_tᵀ W_a h̄_s
            self.w_a = nn.Parameter(torch.empty(query_dim, key_dim))
            nn.init.xavier_uniform_(self.w_a)
        elif score == "concat":
            a = query_dim if attn_dim is None else expect_positive_int("attn_dim", attn_dim)
            # W_a [h_t; h̄_s] = W_q h_t + W_k h̄_s: split so the key half is computed once
            self.w_q = nn.Linear(query_dim, a, bias=False)
            self.w_k = nn.Linear(key_dim, a, bias=False)
            self.v_a = nn.Parameter(torch.empty(a))
            nn.init.normal_(self.v_a, std=a ** -0.5)

    def prepare(self, memory: Tensor) -> Tensor:
        """(B, Ls, Dk) -> keys: (B, Ls, Dk) dot, (B, Ls, Dq) general, (B, Ls, A) concat."""
        if self.score == "general":
            return memory @ self.w_a.T  # W_a h̄_s: (B, Ls, Dk) @ (Dk, Dq) -> (B, Ls, Dq)
        if self.score == "concat":
            return self.w_k(memory)  # (B, Ls, A)
        return memory

    def forward(self, query: Tensor, keys: Tensor) -> Tensor:
        """query (B, Lq, Dq), keys from :meth:`prepare` -> scores (B, Lq, Ls)."""
        if self.score == "concat":
            return additive_from_keys(self.w_q(query), keys, self.v_a)
        return dot(query, keys)  # dot: h_tᵀ h̄_s; general: h_tᵀ (W_a h̄_s)


class _LuongBase(nn.Module):
    def __init__(self, query_dim: int, key_dim: int, score: str, attn_dim: int | None) -> None:
        super().__init__()
        self.query_dim, self.key_dim = query_dim, key_dim
        self.scorer = LuongScore(query_dim, key_dim, score, attn_dim)
        self.hook_weights = HookPoint()  # (B, Lq, Ls): read or patch alignments

    def project_keys(self, memory: Tensor, lengths: Tensor | None = None) -> Tensor:
        """NaN/inf source states and padded steps (``lengths``) get zero keys
        (:func:`~attnlab.modules.bahdanau.finite_memory`, :func:`~attnlab.modules.bahdanau.unpadded`)."""
        return self.scorer.prepare(finite_memory(unpadded(memory, lengths)))

    def _finish(self, weights: Tensor, memory: Tensor, scores: Tensor, allowed: Tensor,
                centres: Tensor | None = None) -> Alignment:
        weights = self.hook_weights(weights)
        context = read(weights, memory)  # c_t: (B, Lq, Ls) @ (B, Ls, Dk) -> (B, Lq, Dk)
        return Alignment(context, weights, scores, allowed, centres)

    def _scores(self, query: Tensor, memory: Tensor, keys: Tensor | None) -> Tensor:
        return self.scorer(query, self.project_keys(memory) if keys is None else keys)


class LuongAttention(_LuongBase):
    """Global attention (§3.1): every source state, scored by eq. (8), normalised by eq. (7)."""

    def __init__(self, query_dim: int, key_dim: int, score: ScoreName = "general",
                 attn_dim: int | None = None) -> None:
        super().__init__(query_dim, key_dim, score, attn_dim)

    def forward(self, query: Tensor, memory: Tensor, lengths: Tensor | None = None, *,
                keys: Tensor | None = None, allowed: Tensor | None = None,
                positions: Tensor | None = None) -> Alignment:
        q, m = check_inputs(query, memory, lengths)
        del positions  # global: p_t plays no part
        scores = self._scores(q, m, keys)  # (B, Lq, Ls)
        if allowed is None:
            allowed = source_allowed(lengths, q.shape[0], q.shape[1], m.shape[1], m.device)
        allowed = allowed.expand_as(scores)
        return self._finish(align(scores, allowed), m, scores, allowed)


def _positions(positions: Tensor | None, batch: int, q_len: int, device: torch.device) -> Tensor:
    """Target step index t per query: (B, Lq) long. Default 0 .. Lq−1 (teacher forcing)."""
    if positions is None:
        return torch.arange(q_len, device=device).expand(batch, q_len)
    p = torch.as_tensor(positions, device=device)
    if p.is_floating_point():
        raise TypeError(f"positions: expected integer step indices, got dtype {p.dtype}")
    if p.ndim == 1:
        p = p.unsqueeze(0)
    if p.ndim != 2 or p.shape[-1] != q_len or p.shape[0] not in (1, batch):
        raise ValueError(f"positions: expected shape (Lq,) or (B, Lq) = ({batch}, {q_len}), "
                         f"got {tuple(p.shape)}")
    return p.long().expand(batch, q_len)


class LuongLocalM(_LuongBase):
    """Local-m (§3.2): p_t = t, read the window [t − D, t + D] with eq. (7) inside it.

    A window that lies wholly past the end of a short source gives a zero context
    (nothing to attend), as the paper's definition implies.
    """

    def __init__(self, query_dim: int, key_dim: int, window: int = 10,
                 score: ScoreName = "general", attn_dim: int | None = None) -> None:
        super().__init__(query_dim, key_dim, score, attn_dim)
        self.window = expect_nonneg_int("window", window)
        self._window_mask = sliding_window(self.window, self.window)  # [t − D, t + D]

    def forward(self, query: Tensor, memory: Tensor, lengths: Tensor | None = None, *,
                keys: Tensor | None = None, allowed: Tensor | None = None,
                positions: Tensor | None = None) -> Alignment:
        q, m = check_inputs(query, memory, lengths)
        bsz, q_len, src_len = q.shape[0], q.shape[1], m.shape[1]
        pos = _positions(positions, bsz, q_len, m.device)  # t: (B, Lq)
        mask = self._window_mask
        if lengths is not None:
            mask = mask & padding(k_lengths=lengths)
        b, h, _, kv = index_grid(bsz, q_len, src_len, m.device)
        window = mask.evaluate(b, h, pos.view(bsz, 1, q_len, 1), kv, q_len, src_len)[:, 0]
        if allowed is not None:
            window = window & allowed
        window = window.expand(bsz, q_len, src_len)  # (B, Lq, Ls)
        scores = self._scores(q, m, keys)
        return self._finish(align(scores, window), m, scores, window)


class LuongLocalP(_LuongBase):
    """Local-p (§3.2): predict p_t (eq. 9), read [p_t − D, p_t + D], Gaussian-weight (eq. 10)."""

    def __init__(self, query_dim: int, key_dim: int, window: int = 10,
                 score: ScoreName = "general", attn_dim: int | None = None,
                 predictor_dim: int | None = None) -> None:
        super().__init__(query_dim, key_dim, score, attn_dim)
        self.window = expect_positive_int("window", window)
        self.sigma = self.window / 2.0  # σ = D/2, set empirically in the paper
        hp = query_dim if predictor_dim is None else expect_positive_int("predictor_dim",
                                                                         predictor_dim)
        self.w_p = nn.Linear(query_dim, hp, bias=False)  # W_p
        self.v_p = nn.Linear(hp, 1, bias=False)  # v_p

    def predict_position(self, query: Tensor, lengths: Tensor | None, src_len: int) -> Tensor:
        """p_t = S · sigmoid(v_pᵀ tanh(W_p h_t)) (eq. 9): (B, Lq, Dq) -> (B, Lq), in (0, S)."""
        s = (torch.full((query.shape[0],), float(src_len), device=query.device)
             if lengths is None else lengths.to(query.dtype))
        gate = torch.sigmoid(self.v_p(torch.tanh(self.w_p(query)))).squeeze(-1)  # (B, Lq)
        return s.to(query.dtype).unsqueeze(-1) * gate

    def forward(self, query: Tensor, memory: Tensor, lengths: Tensor | None = None, *,
                keys: Tensor | None = None, allowed: Tensor | None = None,
                positions: Tensor | None = None) -> Alignment:
        q, m = check_inputs(query, memory, lengths)
        del positions  # local-p predicts its own centre
        bsz, q_len, src_len = q.shape[0], q.shape[1], m.shape[1]
        centres = self.predict_position(q, lengths, src_len)  # p_t: (B, Lq)
        s = torch.arange(src_len, device=m.device, dtype=q.dtype)  # (Ls,)
        dist = s.view(1, 1, -1) - centres.unsqueeze(-1)  # s − p_t: (B, Lq, Ls)
        # The window [p_t − D, p_t + D] is a real interval: no rounding of p_t.
        window = dist.detach().abs() <= self.window
        if allowed is None:
            allowed = source_allowed(lengths, bsz, q_len, src_len, m.device)
        window = window & allowed.expand(bsz, q_len, src_len)  # (B, Lq, Ls)
        scores = self._scores(q, m, keys)
        gauss = torch.exp(-dist.pow(2) / (2.0 * self.sigma ** 2))  # eq. 10, σ = D/2
        weights = align(scores, window) * gauss  # align() is eq. 7 over the window
        return self._finish(weights, m, scores, window, centres)


ATTENTIONS = {"luong-dot": "dot", "luong-general": "general", "luong-concat": "concat"}


def make_luong(kind: str, query_dim: int, key_dim: int, *, window: int = 10,
               score: ScoreName = "general", attn_dim: int | None = None) -> nn.Module:
    """``luong-dot|luong-general|luong-concat`` (global) or ``luong-local-m|luong-local-p``."""
    if kind in ATTENTIONS:
        return LuongAttention(query_dim, key_dim, ATTENTIONS[kind], attn_dim)  # type: ignore[arg-type]
    if kind == "luong-local-m":
        return LuongLocalM(query_dim, key_dim, window, score, attn_dim)
    if kind == "luong-local-p":
        return LuongLocalP(query_dim, key_dim, window, score, attn_dim)
    known = ", ".join([*ATTENTIONS, "luong-local-m", "luong-local-p"])
    raise ValueError(f"kind: expected one of {known}, got {kind!r}")
